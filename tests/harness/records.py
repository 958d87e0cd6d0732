"""Records as the services hand them to each other, for tests: one factory per record type."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)
ANN = {"email": "ann@customer.org", "name": "Ann Customer", "member": False}


def command(n: int, *, domain: str = "customer.org", **overrides: Any) -> dict[str, Any]:
    """A TicketCommand as fastavro decodes it: a new ticket from Ann's mail to SUPPORT.

    ``n`` makes the id, the Message-ID (``msg-<n>@<domain>``, also the thread key),
    the UID and the received time (``T0`` + n minutes) unique; ``overrides``
    replace fields as given.
    """
    cmd: dict[str, Any] = {
        "id": f"cmd-{n}",
        "action": "create",
        "classification": "new",
        "queue": "SUPPORT",
        "mailbox": "support@example.com",
        "ticket_type": "question",
        "components": ["billing", "web"],
        "author": ANN,
        "participants": [],
        "subject": f"Subject {n}",
        "text": f"Body {n}",
        "html": None,
        "attachments": [],
        "message_id": f"msg-{n}@{domain}",
        "in_reply_to": None,
        "references": [],
        "thread_key": f"msg-{n}@{domain}",
        "ticket_key_hint": None,
        "source_uidvalidity": 7,
        "source_uid": n,
        "received_at": T0 + timedelta(minutes=n),
        "matched_rule": None,
        "reason": None,
    }
    cmd.update(overrides)
    return cmd
