"""Replies that come before the mail they answer: held back, and the Message-IDs awaited.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 12:00:00

Both tables start empty: only replies applied from now on are held back or make
their ticket await the mail they answer (services/tickets/pending.py, apply.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUE = 64  # frozen copies of tables.QUEUE, MESSAGE_ID and COMMAND_ID at this revision
MESSAGE_ID = 998
COMMAND_ID = 128


def upgrade() -> None:
    op.create_table(
        "pending_replies",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("command_id", sa.String(COMMAND_ID), nullable=False),
        sa.Column("queue", sa.String(QUEUE), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pending_replies"),
        sa.UniqueConstraint("command_id", name="uq_pending_replies_command_id"),
    )
    op.create_index("ix_pending_replies_due_at", "pending_replies", ["due_at"])
    op.create_table(
        "awaited_messages",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("queue", sa.String(QUEUE), nullable=False),
        sa.Column("message_id", sa.String(MESSAGE_ID), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=True),
        sa.Column("pending_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_awaited_messages_ticket_id_tickets"),
        sa.ForeignKeyConstraint(["pending_id"], ["pending_replies.id"],
                                name="fk_awaited_messages_pending_id_pending_replies"),
        sa.PrimaryKeyConstraint("id", name="pk_awaited_messages"),
    )
    op.create_index("ix_awaited_messages_queue_message_id", "awaited_messages", ["queue", "message_id"])
    op.create_index("ix_awaited_messages_ticket_id", "awaited_messages", ["ticket_id"])
    op.create_index("ix_awaited_messages_pending_id", "awaited_messages", ["pending_id"])


def downgrade() -> None:
    op.drop_table("awaited_messages")
    op.drop_table("pending_replies")
