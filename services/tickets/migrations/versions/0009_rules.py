"""Routing rules: a ticket's priority, tags and the rules that matched its mail.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 10:00:00

``tickets.priority`` (low, normal, high, urgent) and ``tickets.matched_rules``
(the names of the routing rules that matched the opening mail, JSON) are NULL
for every ticket stored before: no rule ran for them. ``ticket_tags`` holds a
ticket's tags, one row each, with an index by tag for a filter; it starts empty.

SQLite accepts a CHECK constraint in ADD COLUMN for the new column itself
(rows already there are NULL, which passes), so the priority CHECK exists on
both backends; PostgreSQL adds it as a named constraint.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TAG = 64  # a frozen copy of tables.TAG at this revision
_PRIORITY_CHECK = "priority IN ('low', 'normal', 'high', 'urgent')"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"ALTER TABLE tickets ADD COLUMN priority VARCHAR(16) "
                   f"CONSTRAINT ck_tickets_priority CHECK ({_PRIORITY_CHECK})")
    else:
        op.add_column("tickets", sa.Column("priority", sa.String(16), nullable=True))
        op.create_check_constraint("ck_tickets_priority", "tickets", _PRIORITY_CHECK)
    op.add_column("tickets", sa.Column("matched_rules", sa.JSON(), nullable=True))
    op.create_table(
        "ticket_tags",
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(TAG), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_ticket_tags_ticket_id_tickets"),
        sa.PrimaryKeyConstraint("ticket_id", "tag", name="pk_ticket_tags"),
    )
    op.create_index("ix_ticket_tags_tag_ticket_id", "ticket_tags", ["tag", "ticket_id"])


def downgrade() -> None:
    op.drop_table("ticket_tags")
    op.drop_column("tickets", "matched_rules")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("ck_tickets_priority", "tickets", type_="check")
    op.drop_column("tickets", "priority")  # SQLite drops its own column's CHECK with it
