"""Mark modes: how the fetcher finds mail it has not delivered yet, and how it marks delivered mail.

The server's flags alone decide what is new (never a remembered UID), so a
restart or a reconnect loses nothing. Modes (``fetcher.mark.mode``):

* ``keyword`` (default): ``STORE +FLAGS ($Deskmail)``; new = ``UNKEYWORD $Deskmail
  NOT DELETED``. People can read mail in the mailbox without hiding it from
  deskmail. If the folder cannot store keywords permanently (``PERMANENTFLAGS``
  without ``\\*`` or the keyword), a keyword would be forgotten at logout and every
  message fetched again forever, so the worker falls back to ``seen`` mode for
  that session and logs a warning naming the mailbox. Falling back keeps mail
  flowing; stopping would turn a server limitation into an outage.
* ``seen``: ``STORE +FLAGS (\\Seen)``; new = ``UNSEEN NOT DELETED``. Mail somebody
  reads in the mailbox before deskmail fetches it is not ingested.
* ``move``: ``MOVE`` to ``mark.folder`` (created if missing); without the MOVE
  capability ``COPY`` + ``\\Deleted`` + ``UID EXPUNGE`` (plain ``EXPUNGE`` without
  UIDPLUS). New = everything in the folder not flagged ``\\Deleted``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from services.common.config import MarkSettings
from services.fetcher.imap import MailClient

MarkMode = Literal["keyword", "seen", "move"]

SEEN = b"\\Seen"
DELETED = b"\\Deleted"


def search_criteria(mode: MarkMode, keyword: str) -> list[str]:
    """The UID SEARCH that finds messages not yet delivered in ``mode``."""
    if mode == "keyword":
        return ["UNKEYWORD", keyword, "NOT", "DELETED"]
    if mode == "seen":
        return ["UNSEEN", "NOT", "DELETED"]
    return ["NOT", "DELETED"]


def keywords_supported(select_info: Mapping[bytes, Any], keyword: str) -> bool:
    """Whether the selected folder keeps ``keyword`` permanently (RFC 3501 PERMANENTFLAGS)."""
    flags = select_info.get(b"PERMANENTFLAGS")
    if flags is None:  # no PERMANENTFLAGS response: all flags may be changed permanently
        return True
    names = {(f.decode("ascii", "replace") if isinstance(f, bytes) else str(f)).lower() for f in flags}
    return "\\*" in names or keyword.lower() in names


def mark_delivered(client: MailClient, uids: Sequence[int], mode: MarkMode, settings: MarkSettings) -> None:
    """Mark delivered messages so that the next ``search_criteria`` search no longer finds them."""
    if mode == "keyword":
        client.add_flags(uids, [settings.keyword.encode()], silent=True)
    elif mode == "seen":
        client.add_flags(uids, [SEEN], silent=True)
    elif client.has_capability("MOVE"):
        client.move(uids, settings.folder)
    else:
        client.copy(uids, settings.folder)
        client.add_flags(uids, [DELETED], silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)
        else:
            client.expunge()
