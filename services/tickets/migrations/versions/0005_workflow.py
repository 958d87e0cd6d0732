"""Workflow: status, assignee, version, events, counts and the queue views' indexes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 14:00:00

Existing tickets keep their status (``open``), stay unassigned and start at
version 1. ``awaiting_reply`` is set where the newest mail of a ticket came
in (or, for a ticket without replies, where a non-member opened it) and no
agent has mailed since; ``first_response_at`` is the first mail an agent sent.
``ticket_counts`` and ``ticket_components`` are filled from the tickets.

SQLite cannot add a constraint to an existing column without rebuilding
``tickets``, which other tables reference while foreign keys are on, so the
status CHECK exists on PostgreSQL only; on SQLite the store is the only writer
of statuses and checks them (services/tickets/workflow.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the lengths in tables.py at this revision.
EMAIL = 320
QUEUE = 64
_STATUS_CHECK = "status IN ('open', 'in_progress', 'waiting', 'resolved', 'closed')"
_EVENT_CHECK = "kind IN ('status', 'assignee', 'type', 'components', 'follow_up')"
_VIEW_INDEXES = {
    "ix_tickets_queue_updated_at_id": ["queue", "updated_at", "id"],
    "ix_tickets_queue_created_at_id": ["queue", "created_at", "id"],
    "ix_tickets_queue_status_updated_at_id": ["queue", "status", "updated_at", "id"],
    "ix_tickets_queue_assignee_updated_at_id": ["queue", "assignee", "updated_at", "id"],
    "ix_tickets_queue_status_assignee_updated_at_id": ["queue", "status", "assignee", "updated_at", "id"],
    "ix_tickets_queue_type_updated_at_id": ["queue", "type", "updated_at", "id"],
    "ix_tickets_queue_awaiting_reply_updated_at_id": ["queue", "awaiting_reply", "updated_at", "id"],
    "ix_tickets_status_resolved_at": ["status", "resolved_at"],
}


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.add_column("tickets", sa.Column("assignee", sa.String(EMAIL), nullable=True))
    op.add_column("tickets", sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False))
    op.add_column("tickets", sa.Column("awaiting_reply", sa.Boolean(), server_default=sa.text("false"),
                                       nullable=False))
    op.add_column("tickets", sa.Column("first_response_at", _utc(), nullable=True))
    op.add_column("tickets", sa.Column("resolved_at", _utc(), nullable=True))
    if sqlite:
        # SQLite accepts a REFERENCES clause in ADD COLUMN (the value defaults to NULL).
        op.execute("ALTER TABLE tickets ADD COLUMN follow_up_of INTEGER "
                   "CONSTRAINT fk_tickets_follow_up_of_tickets REFERENCES tickets (id)")
    else:
        op.add_column("tickets", sa.Column("follow_up_of", sa.Integer(), nullable=True))
        op.create_foreign_key("fk_tickets_follow_up_of_tickets", "tickets", "tickets", ["follow_up_of"], ["id"])
        op.create_check_constraint("ck_tickets_status", "tickets", _STATUS_CHECK)
    for name, columns in _VIEW_INDEXES.items():
        op.create_index(name, "tickets", columns)

    op.create_table(
        "ticket_components",
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("component", sa.String(255), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_ticket_components_ticket_id_tickets"),
        sa.PrimaryKeyConstraint("ticket_id", "component", name="pk_ticket_components"),
    )
    op.create_index("ix_ticket_components_component_ticket_id", "ticket_components", ["component", "ticket_id"])
    op.create_table(
        "ticket_counts",
        sa.Column("queue", sa.String(QUEUE), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("assignee", sa.String(EMAIL), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("queue", "status", "assignee", name="pk_ticket_counts"),
    )
    op.create_table(
        "ticket_events",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(EMAIL), nullable=True),
        sa.Column("old_value", sa.Text(), nullable=True),
        sa.Column("new_value", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.CheckConstraint(_EVENT_CHECK, name="ck_ticket_events_kind"),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_ticket_events_ticket_id_tickets"),
        sa.PrimaryKeyConstraint("id", name="pk_ticket_events"),
    )
    op.create_index("ix_ticket_events_ticket_id_created_at", "ticket_events", ["ticket_id", "created_at"])

    _fill()


def _fill() -> None:
    bind = op.get_bind()
    bind.execute(sa.text(
        "INSERT INTO ticket_counts (queue, status, assignee, n) "
        "SELECT queue, status, '', count(*) FROM tickets GROUP BY queue, status"))
    bind.execute(sa.text(
        "UPDATE tickets SET first_response_at = (SELECT min(c.created_at) FROM comments c "
        "WHERE c.ticket_id = tickets.id AND c.kind = 'mail_out')"))
    bind.execute(sa.text(
        "UPDATE tickets SET awaiting_reply = true WHERE COALESCE("
        "(SELECT c.kind FROM comments c WHERE c.ticket_id = tickets.id AND c.kind IN ('mail_in', 'mail_out') "
        " ORDER BY c.created_at DESC, c.id DESC LIMIT 1), "
        "CASE WHEN tickets.author_member THEN 'member' ELSE 'mail_in' END) = 'mail_in'"))
    rows = bind.execute(sa.text("SELECT id, components FROM tickets")).all()
    pairs: list[dict[str, object]] = []
    for ticket_id, components in rows:
        values = json.loads(components) if isinstance(components, str) else components
        pairs.extend({"ticket_id": ticket_id, "component": str(c)[:255]} for c in dict.fromkeys(values or ()))
    if pairs:
        bind.execute(sa.text("INSERT INTO ticket_components (ticket_id, component) VALUES (:ticket_id, :component)"),
                     pairs)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.drop_table("ticket_events")
    op.drop_table("ticket_counts")
    op.drop_table("ticket_components")
    for name in _VIEW_INDEXES:
        op.drop_index(name, "tickets")
    if not sqlite:
        op.drop_constraint("ck_tickets_status", "tickets", type_="check")
        op.drop_constraint("fk_tickets_follow_up_of_tickets", "tickets", type_="foreignkey")
    if sqlite:
        # SQLite drops no column that takes part in a foreign key: rebuild the table for it.
        with op.batch_alter_table("tickets") as batch:
            batch.drop_column("follow_up_of")
    else:
        op.drop_column("tickets", "follow_up_of")
    for column in ("resolved_at", "first_response_at", "awaiting_reply", "version", "assignee"):
        op.drop_column("tickets", column)
