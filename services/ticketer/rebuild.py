"""A mail rebuilt from its TicketCommand, for suspended mail whose original was not kept.

The ticketer decides a rate limit itself, after the router has let the raw mail
go (the router keeps it only for what it refuses). So that an admin can still
open and release such a mail, the ticketer rebuilds it from the command: the
same From, To/Cc, Subject, Date, Message-ID and threading headers, the whole
text, the HTML and every attachment whose content is in the blob store. The
header ``X-Deskmail-Rebuilt`` says so, and what could not be put back. Released,
it goes through the router like any mail and makes the ticket or comment the
original would have made.

Pure: the caller reads the attachments' bytes and stores the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any

__all__ = ["REBUILT_HEADER", "rebuilt_mail"]

REBUILT_HEADER = "X-Deskmail-Rebuilt"
_POLICY = SMTP.clone(max_line_length=998, raise_on_defect=False)


def _address(email: str, name: str | None) -> str:
    local, _, domain = email.rpartition("@")
    try:
        return str(Address(display_name=name or "", username=local, domain=domain))
    except (ValueError, IndexError):  # an address the header registry will not write: bare, as it came
        return email


def _one_line(value: str) -> str:
    return " ".join(value.split())


def rebuilt_mail(command: Mapping[str, Any], contents: Mapping[str, bytes | None], why: str) -> bytes:
    """The mail ``command`` was made from, as far as the command holds it.

    ``contents`` maps each attachment's ``blob_ref`` to its bytes (None: not in
    the blob store); ``why`` says in the header why it was rebuilt.
    """
    author = command["author"]
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = _address(author["email"], author.get("name"))
    msg["To"] = command["mailbox"]
    cc = [_address(p["email"], p.get("name")) for p in command.get("participants") or ()]
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = _one_line(command.get("subject") or "")
    received = command.get("received_at")
    if isinstance(received, datetime):
        msg["Date"] = format_datetime(received)
    msg["Message-ID"] = f"<{command['message_id']}>"
    if command.get("in_reply_to"):
        msg["In-Reply-To"] = f"<{command['in_reply_to']}>"
    if command.get("references"):
        msg["References"] = " ".join(f"<{r}>" for r in command["references"])
    missing = []
    msg.set_content(command.get("text") or "", charset="utf-8")
    if command.get("html"):
        msg.add_alternative(command["html"], subtype="html", charset="utf-8")
    for item in command.get("attachments") or ():
        data = contents.get(item["blob_ref"]) if item.get("blob_ref") else None
        if data is None:
            missing.append(item["filename"])
            continue
        maintype, _, subtype = (item.get("content_type") or "application/octet-stream").partition("/")
        msg.add_attachment(data, maintype=maintype or "application", subtype=subtype or "octet-stream",
                           filename=_one_line(item["filename"]) or "attachment.bin",
                           cid=f"<{item['content_id']}>" if item.get("content_id") else None)
    note = f"{why}; rebuilt from what deskmail read, the original was not kept"
    if missing:
        note += "; without " + ", ".join(_one_line(name) for name in missing[:20])
    msg[REBUILT_HEADER] = _one_line(note)[:900]
    return msg.as_bytes()
