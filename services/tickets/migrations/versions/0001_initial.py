"""Initial tickets schema.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the lengths in tables.py at this revision: a migration must
# not change meaning when tables.py moves on.
EMAIL = 320
MESSAGE_ID = 998
QUEUE = 64
TICKET_KEY = 96
COMMAND_ID = 128
HASH = 64


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "queue_counters",
        sa.Column("queue", sa.String(QUEUE), nullable=False),
        sa.Column("last_number", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("queue", name="pk_queue_counters"),
    )
    op.create_table(
        "tickets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(TICKET_KEY), nullable=False),
        sa.Column("queue", sa.String(QUEUE), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("description_html", sa.Text(), nullable=True),
        sa.Column("type", sa.String(64), nullable=True),
        sa.Column("components", sa.JSON(), nullable=False),
        sa.Column("author_email", sa.String(EMAIL), nullable=False),
        sa.Column("author_name", sa.Text(), nullable=True),
        sa.Column("author_member", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(32), server_default=sa.text("'open'"), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("command_id", sa.String(COMMAND_ID), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tickets"),
        sa.UniqueConstraint("key", name="uq_tickets_key"),
        sa.UniqueConstraint("queue", "number", name="uq_tickets_queue_number"),
    )
    op.create_index("ix_tickets_created_at", "tickets", ["created_at"])
    op.create_table(
        "comments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("author_email", sa.String(EMAIL), nullable=False),
        sa.Column("author_name", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("message_id", sa.String(MESSAGE_ID), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("command_id", sa.String(COMMAND_ID), nullable=True),
        sa.CheckConstraint("kind IN ('mail_in', 'mail_out', 'note')", name="ck_comments_kind"),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_comments_ticket_id_tickets"),
        sa.PrimaryKeyConstraint("id", name="pk_comments"),
    )
    op.create_index("ix_comments_ticket_id_created_at", "comments", ["ticket_id", "created_at"])
    op.create_table(
        "participants",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(EMAIL), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("member", sa.Boolean(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.CheckConstraint("role IN ('author', 'participant')", name="ck_participants_role"),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name="fk_participants_ticket_id_tickets"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_participants"),
        sa.UniqueConstraint("ticket_id", "email", name="uq_participants_ticket_id_email"),
    )
    op.create_table(
        "attachments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("comment_id", sa.Integer(), nullable=True),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(HASH), nullable=False),
        sa.Column("blob_ref", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["comment_id"], ["comments.id"], name="fk_attachments_comment_id_comments"
        ),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name="fk_attachments_ticket_id_tickets"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_attachments"),
    )
    op.create_index("ix_attachments_ticket_id", "attachments", ["ticket_id"])
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("queue", sa.String(QUEUE), nullable=False),
        sa.Column("message_id", sa.String(MESSAGE_ID), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("comment_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["comment_id"], ["comments.id"], name="fk_messages_comment_id_comments"
        ),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_messages_ticket_id_tickets"),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("queue", "message_id", name="uq_messages_queue_message_id"),
    )
    op.create_index("ix_messages_message_id", "messages", ["message_id"])
    op.create_table(
        "receipts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("mailbox", sa.String(EMAIL), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("command_id", sa.String(COMMAND_ID), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_receipts_ticket_id_tickets"),
        sa.PrimaryKeyConstraint("id", name="pk_receipts"),
        sa.UniqueConstraint(
            "mailbox", "uidvalidity", "uid", name="uq_receipts_mailbox_uidvalidity_uid"
        ),
    )
    op.create_table(
        "processed_commands",
        sa.Column("command_id", sa.String(COMMAND_ID), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("ticket_key", sa.String(TICKET_KEY), nullable=False),
        sa.Column("comment_id", sa.Integer(), nullable=True),
        sa.Column("applied_at", _utc(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('created', 'commented')", name="ck_processed_commands_outcome"
        ),
        sa.PrimaryKeyConstraint("command_id", name="pk_processed_commands"),
    )
    op.create_table(
        "rejections",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("command_id", sa.String(COMMAND_ID), nullable=False),
        sa.Column("mailbox", sa.String(EMAIL), nullable=False),
        sa.Column("queue", sa.String(QUEUE), nullable=True),
        sa.Column("classification", sa.String(16), nullable=False),
        sa.Column("author_email", sa.String(EMAIL), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("message_id", sa.String(MESSAGE_ID), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("received_at", _utc(), nullable=False),
        sa.Column("recorded_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejections"),
        sa.UniqueConstraint("command_id", name="uq_rejections_command_id"),
    )
    op.create_index("ix_rejections_received_at", "rejections", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_rejections_received_at", table_name="rejections")
    op.drop_table("rejections")
    op.drop_table("processed_commands")
    op.drop_table("receipts")
    op.drop_index("ix_messages_message_id", table_name="messages")
    op.drop_table("messages")
    op.drop_index("ix_attachments_ticket_id", table_name="attachments")
    op.drop_table("attachments")
    op.drop_table("participants")
    op.drop_index("ix_comments_ticket_id_created_at", table_name="comments")
    op.drop_table("comments")
    op.drop_index("ix_tickets_created_at", table_name="tickets")
    op.drop_table("tickets")
    op.drop_table("queue_counters")
