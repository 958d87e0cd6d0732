"""Bounces: an outgoing comment's delivery status may be ``bounced``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 10:00:00

A delivery status notification for mail deskmail sent marks that comment
``bounced`` (services/tickets/apply.py); the CHECK on ``comments.delivery_status``
gains the value. No row changes on the way up.

PostgreSQL drops and adds the named constraint. On SQLite the CHECK belongs to
the column (0002 wrote it into ADD COLUMN) and SQLite cannot alter it, so the
table is rebuilt from its own CREATE statement with only the CHECK's text
replaced (every column a later or parallel revision added stays as it is):
the rows are copied aside (into a table declared the same), the search triggers and the view on ``comments``
(revision 0006) are dropped, the table is dropped and created again, the rows
go back with their ids (so the FTS index, whose rowids are the comment ids,
stays valid and is not rebuilt), and the indexes, triggers and view are created
again from their stored statements. Other tables' foreign keys name
``comments``; foreign key checks are deferred to the end of the migration's
transaction (PRAGMA defer_foreign_keys), when every referenced row is back.

Down: ``bounced`` becomes ``failed`` (the mail did not arrive; the detail keeps
the bounce's reason) and the CHECK loses the value again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CONSTRAINT = "ck_comments_delivery_status"
_BEFORE = "delivery_status IN ('queued', 'retrying', 'sent', 'failed')"
_AFTER = "delivery_status IN ('queued', 'retrying', 'sent', 'failed', 'bounced')"
_COPY = "_comments_0010"
_CREATE_COMMENTS = re.compile(r'^CREATE TABLE\s+(?:"comments"|comments)', re.IGNORECASE)


def upgrade() -> None:
    _change_check(_BEFORE, _AFTER)


def downgrade() -> None:
    op.execute("UPDATE comments SET delivery_status = 'failed' WHERE delivery_status = 'bounced'")
    _change_check(_AFTER, _BEFORE)


def _change_check(old: str, new: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.drop_constraint(op.f(_CONSTRAINT), "comments", type_="check")
        op.create_check_constraint(op.f(_CONSTRAINT), "comments", new)
        return
    table_sql = bind.execute(sa.text(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'comments'")).scalar_one()
    if table_sql.count(f"CHECK ({old})") != 1:
        raise RuntimeError(f"the comments table has no CHECK ({old}) to replace")
    # Indexes and triggers on comments, and views that read it, in the order they
    # were made; their statements are run as SQLite stored them (exec_driver_sql:
    # a ":" in them is no bind parameter).
    dependents = bind.execute(sa.text(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name != 'comments' AND "
        "((type IN ('index', 'trigger') AND tbl_name = 'comments') OR (type = 'view' AND sql LIKE '%comments%')) "
        "ORDER BY rowid")).all()
    bind.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
    # The copy is declared like comments itself, so every value keeps its stored form.
    bind.exec_driver_sql(_CREATE_COMMENTS.sub(f"CREATE TABLE {_COPY}", table_sql, count=1))
    bind.exec_driver_sql(f"INSERT INTO {_COPY} SELECT * FROM comments")
    for kind, name, _ in dependents:
        bind.exec_driver_sql(f'DROP {kind.upper()} "{name}"')
    bind.exec_driver_sql("DROP TABLE comments")
    bind.exec_driver_sql(table_sql.replace(f"CHECK ({old})", f"CHECK ({new})"))
    bind.exec_driver_sql(f"INSERT INTO comments SELECT * FROM {_COPY}")
    bind.exec_driver_sql(f"DROP TABLE {_COPY}")
    for _, _, sql in dependents:
        bind.exec_driver_sql(sql)
