"""Outgoing mail: agent comments with recipients and delivery state, the outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01 00:00:00

Comments gain the fields of an agent's reply (internal flag, recipients,
signature alias, outbound id) and its delivery state; ``outbox`` holds each
encoded OutboundMail until a relay has handed it to the broker; tickets
remember the mailbox the opening mail arrived at.

SQLite cannot add a constraint to an existing table (Alembic's batch mode would
rebuild ``comments``, which other tables reference while foreign keys are on),
so there the delivery-status CHECK is written into the ADD COLUMN statement;
PostgreSQL gets the same named table constraint.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the lengths in tables.py at this revision.
EMAIL = 320
OUTBOUND_ID = 128
_DELIVERY_CHECK = "delivery_status IN ('queued', 'retrying', 'sent', 'failed')"


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("tickets", sa.Column("mailbox", sa.String(EMAIL), nullable=True))
    op.add_column(
        "comments",
        sa.Column("internal", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column("comments", sa.Column("outbound_id", sa.String(OUTBOUND_ID), nullable=True))
    op.add_column("comments", sa.Column("to_addrs", sa.JSON(), nullable=True))
    op.add_column("comments", sa.Column("cc_addrs", sa.JSON(), nullable=True))
    op.add_column("comments", sa.Column("signature_alias", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE comments ADD COLUMN delivery_status VARCHAR(16) "
            f"CONSTRAINT ck_comments_delivery_status CHECK ({_DELIVERY_CHECK})"
        )
    else:
        op.add_column("comments", sa.Column("delivery_status", sa.String(16), nullable=True))
        # op.f: the name is final (the naming convention would prefix it again).
        op.create_check_constraint(op.f("ck_comments_delivery_status"), "comments", _DELIVERY_CHECK)
    op.add_column("comments", sa.Column("delivery_detail", sa.Text(), nullable=True))
    op.add_column("comments", sa.Column("delivery_updated_at", _utc(), nullable=True))
    op.create_index("ix_comments_outbound_id", "comments", ["outbound_id"], unique=True)
    op.create_table(
        "outbox",
        sa.Column("id", sa.String(OUTBOUND_ID), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("comment_id", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("relayed_at", _utc(), nullable=True),
        sa.ForeignKeyConstraint(["comment_id"], ["comments.id"], name="fk_outbox_comment_id_comments"),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_outbox_ticket_id_tickets"),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_relayed_at_created_at", "outbox", ["relayed_at", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_relayed_at_created_at", table_name="outbox")
    op.drop_table("outbox")
    op.drop_index("ix_comments_outbound_id", table_name="comments")
    if op.get_bind().dialect.name != "sqlite":
        # On SQLite the CHECK belongs to the column and goes with it.
        op.drop_constraint(op.f("ck_comments_delivery_status"), "comments", type_="check")
    for column in (
        "delivery_updated_at", "delivery_detail", "delivery_status", "signature_alias",
        "cc_addrs", "to_addrs", "outbound_id", "internal",
    ):
        op.drop_column("comments", column)
    op.drop_column("tickets", "mailbox")
