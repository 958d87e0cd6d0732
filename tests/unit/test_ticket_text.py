"""`deskmail tickets show`'s text marks a member author whose From was not proven."""

from __future__ import annotations

import dataclasses

from services.cli.ticket_text import as_text
from tests.unit.test_replies import ticket


def test_a_member_author_without_proof_is_marked_not_verified() -> None:
    member_ticket = dataclasses.replace(ticket(author="alice@example.com"), author_verified=False)
    assert "from Carol Customer <alice@example.com> (not verified" in as_text(member_ticket)
    proven = dataclasses.replace(member_ticket, author_verified=True)
    assert "not verified" not in as_text(proven)
    assert "not verified" not in as_text(ticket())  # an outsider is shown as external, never "verified"
