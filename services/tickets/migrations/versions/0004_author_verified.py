"""Author verified: whether sender authentication proved the From of incoming mail.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 12:00:00

``tickets.author_verified`` is false for every ticket opened before this
revision, and ``comments.author_verified`` false for every incoming mail
already stored: none of them kept a proof, and marking them proven would claim
a check deskmail cannot show. An agent's comment is no mail and stays NULL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tickets",
        sa.Column("author_verified", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column("comments", sa.Column("author_verified", sa.Boolean(), nullable=True))
    op.execute("UPDATE comments SET author_verified = false WHERE kind = 'mail_in'")


def downgrade() -> None:
    op.drop_column("comments", "author_verified")
    op.drop_column("tickets", "author_verified")
