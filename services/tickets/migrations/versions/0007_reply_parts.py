"""Reply parts: a comment's quoted history kept apart, and detected charsets.

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

CHARSET = 40  # frozen copies of tables.CHARSET and tables.MESSAGE_ID at this revision
MESSAGE_ID = 998


def upgrade() -> None:
    op.add_column("comments", sa.Column("quoted", sa.Text(), nullable=True))
    op.add_column("comments", sa.Column("charset_detected", sa.String(CHARSET), nullable=True))
    op.add_column("comments", sa.Column("automatic", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.add_column("tickets", sa.Column("charset_detected", sa.String(CHARSET), nullable=True))
    op.add_column("attachments", sa.Column("content_id", sa.String(MESSAGE_ID), nullable=True))
    op.create_index("ix_tickets_follow_up_of", "tickets", ["follow_up_of"])
    op.create_index("ix_messages_ticket_id", "messages", ["ticket_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_ticket_id", table_name="messages")
    op.drop_index("ix_tickets_follow_up_of", table_name="tickets")
    op.drop_column("attachments", "content_id")
    op.drop_column("tickets", "charset_detected")
    op.drop_column("comments", "automatic")
    op.drop_column("comments", "charset_detected")
    op.drop_column("comments", "quoted")
