"""A mixed, repeatable stream of TicketCommands, as the router writes them, for the
apply bench and the test that the ticketer's SQL changes no table's contents.

Out of every 20 commands: 8 new tickets (some with participants, attachments, a
rules' assignee, priority and tags), 6 replies by In-Reply-To/References, 1 by the
ticket key in the subject, 1 rejection, 1 outsider's reply to no known thread
(``reply_only``: rejected), 1 automatic reply, 1 reply to mail not known yet
(held back when applied with a hold) and 1 command seen before (duplicate).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from tests.harness.records import command

_SENDERS = [{"email": f"customer{i}@example.org", "name": f"Customer {i}", "member": False} for i in range(40)]
_MEMBER = {"email": "alice@example.com", "name": "Alice Agent", "member": True}
_RULED = {"assignee": "bob@example.com", "assignee_rule": "vip", "priority": "high",
          "tags": ["vip", "contract"], "matched_rules": ["vip", "invoices"]}


def stream(n: int, seed: int = 11) -> Iterator[dict[str, Any]]:
    """``n`` commands; command ``i`` arrives at ``T0`` + ``i`` minutes."""
    rng = random.Random(seed)
    opened: list[tuple[int, str]] = []  # (number of the opening command, its Message-ID)
    produced: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        kind = i % 20
        author = rng.choice(_SENDERS)
        if kind in (0, 2, 4, 6, 8, 10, 12, 14) or not opened:
            extra: dict[str, Any] = {}
            if kind == 2:
                extra["participants"] = [rng.choice(_SENDERS), {"email": "carol@example.net", "name": None,
                                                                "member": False}]
            if kind == 4:
                extra["attachments"] = [{"filename": f"invoice-{i}.pdf", "content_type": "application/pdf",
                                         "size": 1000 + i, "sha256": f"{i:064x}", "blob_ref": f"sha256:{i:064x}",
                                         "content_id": None}]
            if kind == 6:
                extra.update(_RULED)
            if kind == 8:
                extra["author"] = _MEMBER
            cmd = command(i, author=extra.pop("author", author), **extra)
            opened.append((i, cmd["message_id"]))
        elif kind in (1, 3, 5, 7, 9, 11):
            number, message_id = rng.choice(opened[-50:])
            cmd = command(i, action="comment", classification="reply", author=author, in_reply_to=message_id,
                          references=[message_id], subject=f"Re: Subject {number}", text=f"Reply {i}\n> quoted")
        elif kind == 13:
            cmd = command(i, action="comment", classification="reply", author=_MEMBER,
                          subject=f"Re: [SUPPORT-{rng.randint(1, len(opened))}] something",
                          ticket_key_hint=f"SUPPORT-{rng.randint(1, len(opened))}")
        elif kind == 15:
            cmd = command(i, action="reject", classification="new", reason="unknown_mailbox: nobody here")
        elif kind == 16:
            cmd = command(i, action="comment", classification="reply", reply_only=True, in_reply_to="elsewhere@x")
        elif kind == 17:
            number, message_id = rng.choice(opened[-50:])
            cmd = command(i, action="comment", classification="auto_reply", in_reply_to=message_id,
                          subject="Out of office")
        elif kind == 18:
            cmd = command(i, action="comment", classification="reply", author=author,
                          in_reply_to=f"later-{i}@example.org", references=[f"later-{i}@example.org"])
        else:
            cmd = dict(rng.choice(produced))
        produced.append(cmd)
        yield cmd
