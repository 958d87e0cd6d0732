"""Reply parts and suspended mail: a comment's quoted history kept apart,
detected charsets, and rejections that can be released.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 19:00:00

``comments.quoted`` holds what the router split off an incoming reply (the
quoted history and the signature block), and ``body`` the new text. Comments
stored before this revision stay whole (``quoted`` NULL): their text is not
split again, because the split would change what agents already read and
what search already found. ``charset_detected`` on tickets (the opening mail)
and comments names the charset a body was decoded with when its declared one
was missing or wrong; NULL for everything stored before. ``comments.automatic``
marks an automatic reply or bounce stored on its thread (it reopened nothing);
false for what is stored already. ``attachments.content_id`` lets the page show a
mail's inline images where its HTML places them; NULL for attachments stored before.

``rejections`` become the suspended list: ``raw_ref`` names the raw mail in
the blob store (NULL for rejections recorded before: their original was not
kept, so they can be looked at but not released), ``reason_code`` is the part
of ``reason`` before the first ":" (filled here for existing rows, "other"
where there is no reason), and ``released_at``, ``released_by`` and
``released_ticket`` record a release.

The columns are added, not rebuilt, so SQLite's search triggers and view on
``comments`` (revision 0006) stay as they are.

Two indexes a ticket page needs: its follow-ups (``tickets.follow_up_of``)
and its Message-IDs (``messages.ticket_id``) were found by reading the whole
table, some 200 ms at 1,000,000 tickets (tests/bench/views.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of tables.py's lengths at this revision.
CHARSET = 40
EMAIL = 320
TICKET_KEY = 96
REASON_CODE = 64
MESSAGE_ID = 998
_REJECTION_INDEXES = {
    "ix_rejections_queue_received_at_id": ["queue", "received_at", "id"],
    "ix_rejections_queue_reason_code_received_at_id": ["queue", "reason_code", "received_at", "id"],
    "ix_rejections_raw_ref": ["raw_ref"],
}
# reason_code from reason, as services.common.suspended.reason_code computes it.
_REASON_CODE = {
    "sqlite": "CASE WHEN instr(reason, ':') > 0 THEN trim(substr(reason, 1, instr(reason, ':') - 1)) "
              "ELSE trim(reason) END",
    "postgresql": "trim(split_part(reason, ':', 1))",
}


def upgrade() -> None:
    op.add_column("comments", sa.Column("quoted", sa.Text(), nullable=True))
    op.add_column("comments", sa.Column("charset_detected", sa.String(CHARSET), nullable=True))
    op.add_column("comments", sa.Column("automatic", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.add_column("tickets", sa.Column("charset_detected", sa.String(CHARSET), nullable=True))
    op.add_column("attachments", sa.Column("content_id", sa.String(MESSAGE_ID), nullable=True))
    op.create_index("ix_tickets_follow_up_of", "tickets", ["follow_up_of"])
    op.create_index("ix_messages_ticket_id", "messages", ["ticket_id"])

    op.add_column("rejections", sa.Column("raw_ref", sa.Text(), nullable=True))
    op.add_column("rejections", sa.Column("reason_code", sa.String(REASON_CODE), server_default=sa.text("'other'"),
                                          nullable=False))
    op.add_column("rejections", sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("rejections", sa.Column("released_by", sa.String(EMAIL), nullable=True))
    op.add_column("rejections", sa.Column("released_ticket", sa.String(TICKET_KEY), nullable=True))
    code = _REASON_CODE[op.get_bind().dialect.name]
    op.execute(f"UPDATE rejections SET reason_code = substr({code}, 1, {REASON_CODE}) "
               f"WHERE reason IS NOT NULL AND {code} <> ''")
    for name, columns in _REJECTION_INDEXES.items():
        op.create_index(name, "rejections", columns)


def downgrade() -> None:
    op.drop_index("ix_messages_ticket_id", table_name="messages")
    op.drop_index("ix_tickets_follow_up_of", table_name="tickets")
    op.drop_column("attachments", "content_id")
    for name in _REJECTION_INDEXES:
        op.drop_index(name, table_name="rejections")
    for column in ("released_ticket", "released_by", "released_at", "reason_code", "raw_ref"):
        op.drop_column("rejections", column)
    op.drop_column("tickets", "charset_detected")
    op.drop_column("comments", "automatic")
    op.drop_column("comments", "charset_detected")
    op.drop_column("comments", "quoted")
