"""The tickets database's engine: creation, SQLite pragmas, write transactions
and migrations.

The store runs on SQLite (``sqlite:///path``; the default) or PostgreSQL
(``postgresql+psycopg://...``). On SQLite every connection gets WAL, a busy
timeout and foreign keys, and a write transaction starts with BEGIN IMMEDIATE,
so two writers never deadlock upgrading a read lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command as alembic_command
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.pool import StaticPool

from services.tickets.migrations import alembic_config

# pg_advisory_xact_lock key serialising `migrate()` across processes ("deskmail").
_MIGRATION_LOCK = 0x6465736B6D61696C
# Execution option read by the SQLite "begin" hook: IMMEDIATE takes the write lock
# up front, so two writers never deadlock upgrading a read lock.
_SQLITE_BEGIN = "deskmail_sqlite_begin"


def build_engine(url: URL, *, sqlite_busy_timeout_s: float) -> Engine:
    """The engine for ``url``; it does not connect yet."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, sqlite_busy_timeout_s)
    return create_engine(url, pool_pre_ping=True)


def _sqlite_engine(url: URL, busy_timeout_s: float) -> Engine:
    database = url.database
    in_memory = database in (None, "", ":memory:")
    if in_memory:
        # One shared connection, or every pooled connection sees its own empty DB.
        engine = create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        if not url.query.get("uri"):
            Path(str(database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
    busy_timeout_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let the "begin" hook below issue BEGIN, instead of the driver's own
        # implicit (and deferred) transaction handling.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """One write transaction: committed when the block returns, rolled back
    when it raises. On SQLite it holds the database write lock throughout."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
        with conn.begin():
            yield conn


def migrate(engine: Engine, url: URL) -> None:
    """Upgrade to the newest revision in one transaction, under a lock
    (PostgreSQL advisory lock; SQLite's write lock)."""
    with write(engine) as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        alembic_command.upgrade(alembic_config(url.render_as_string(hide_password=False), conn), "head")
