"""Rate limits: the arrivals of mail from outside the organization.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 20:00:00

``mail_arrivals`` starts empty: windows are minutes long, so the limits count
from the upgrade on (see services/tickets/ratelimit.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMAIL = 320  # a frozen copy of tables.EMAIL at this revision


def upgrade() -> None:
    op.create_table(
        "mail_arrivals",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("author_email", sa.String(EMAIL), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_mail_arrivals"),
    )
    op.create_index("ix_mail_arrivals_author_email_received_at", "mail_arrivals", ["author_email", "received_at"])
    op.create_index("ix_mail_arrivals_ticket_id_received_at", "mail_arrivals", ["ticket_id", "received_at"])
    op.create_index("ix_mail_arrivals_received_at", "mail_arrivals", ["received_at"])


def downgrade() -> None:
    op.drop_table("mail_arrivals")
