"""The tickets database's engine: creation, SQLite pragmas, write transactions,
migrations and the schema check.

The store runs on SQLite (``sqlite:///path``; the default) or PostgreSQL
(``postgresql+psycopg://...``). On SQLite every connection gets WAL, a busy
timeout and foreign keys, and a write transaction starts with BEGIN IMMEDIATE,
so two writers never deadlock upgrading a read lock.

Operator errors become the store's own exceptions, each one line and without
the password: ``BadDatabaseUrl`` when the engine cannot be built,
``StoreUnavailable`` when it cannot connect, ``SchemaNotCurrent`` when the
schema is not at this code's revision (``SchemaAhead`` when a newer deskmail
migrated it).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command as alembic_command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import StaticPool

from services.common import build
from services.tickets.errors import BadDatabaseUrl, SchemaAhead, SchemaNotCurrent, StoreUnavailable
from services.tickets.migrations import alembic_config
from services.tickets.views import SchemaState

BACKENDS = ("sqlite", "postgresql")
# pg_advisory_xact_lock key serialising `migrate()` across processes ("deskmail").
_MIGRATION_LOCK = 0x6465736B6D61696C
# Execution option read by the SQLite "begin" hook: IMMEDIATE takes the write lock
# up front, so two writers never deadlock upgrading a read lock.
_SQLITE_BEGIN = "deskmail_sqlite_begin"
_MIGRATE_HINT = "run `deskmail db migrate`"


def parse_url(url: str) -> URL:
    """``url`` parsed; raises BadDatabaseUrl for anything SQLAlchemy cannot parse
    or a backend other than SQLite and PostgreSQL."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # SQLAlchemy's message may quote the URL, password and all: not chained.
        raise BadDatabaseUrl(
            "database.url is not a database URL: expected sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DATABASE"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise BadDatabaseUrl(
            f"database.url names the backend {backend!r}; the tickets database runs on "
            f"sqlite or postgresql: {safe_url(parsed)}"
        )
    return parsed


def safe_url(url: URL) -> str:
    """The URL as an operator may see it in a log: the password masked."""
    return url.render_as_string(hide_password=True)


def build_engine(url: URL, *, sqlite_busy_timeout_s: float) -> Engine:
    """The engine for a URL from ``parse_url``. It does not connect yet; raises
    BadDatabaseUrl when the URL names a driver that is not installed."""
    try:
        if url.get_backend_name() == "sqlite":
            return _sqlite_engine(url, sqlite_busy_timeout_s)
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError) as exc:  # NoSuchModuleError is an ArgumentError
        raise BadDatabaseUrl(f"database.url cannot be used ({exc}): {safe_url(url)}") from exc


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
                _wal(cursor, busy_timeout_s)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _wal(cursor: Any, busy_timeout_s: float) -> None:
    """Switch the file to WAL mode (a no-op once it is).

    Changing the journal mode needs the file to itself, and SQLite answers
    "database is locked" at once, without its busy handler, while another
    connection is writing (several processes migrating a new database at the
    same time do exactly that). So retry for as long as the busy timeout.
    """
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


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
    (PostgreSQL advisory lock; SQLite's write lock). Raises SchemaAhead, and
    changes nothing, when a newer deskmail migrated the database."""
    with write(engine) as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config = alembic_config(url.render_as_string(hide_password=False), conn)
        # Read under the lock: a newer deskmail migrating at the same moment is seen.
        state, revision, head = _state(conn, ScriptDirectory.from_config(config))
        if state == "ahead":
            raise _ahead(revision, head)
        alembic_command.upgrade(config, "head")


def ping(engine: Engine, url: URL) -> None:
    """Connect and run ``SELECT 1``; raises StoreUnavailable."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        raise _unavailable(url, exc) from None


def schema_revisions(engine: Engine, url: URL) -> tuple[SchemaState, str | None, str]:
    """(state, the database's revision, this code's head), read without migrating.

    Raises StoreUnavailable when the database cannot be reached.
    """
    script = ScriptDirectory.from_config(alembic_config(url.render_as_string(hide_password=False)))
    try:
        with engine.connect() as conn:
            return _state(conn, script)
    except OperationalError as exc:
        raise _unavailable(url, exc) from None


def _state(conn: Connection, script: ScriptDirectory) -> tuple[SchemaState, str | None, str]:
    head = script.get_current_head()
    assert head is not None, "the tickets migrations have no head"
    known = {s.revision for s in script.walk_revisions()}
    found = MigrationContext.configure(conn).get_current_heads()
    if not found:
        return "missing", None, head
    revision = ", ".join(found)
    if any(r not in known for r in found):
        return "ahead", revision, head
    if set(found) == {head}:
        return "current", revision, head
    return "behind", revision, head


def require_current(engine: Engine, url: URL) -> None:
    """Raises SchemaNotCurrent, with what the operator should do, unless the
    schema is at this code's head (SchemaAhead when a newer deskmail migrated
    it); StoreUnavailable when unreachable."""
    state, revision, head = schema_revisions(engine, url)
    if state == "current":
        return
    if state == "ahead":
        raise _ahead(revision, head)
    if state == "missing":
        message = f"the tickets database is not migrated yet: {_MIGRATE_HINT}"
    else:
        message = (
            f"the tickets database is at revision {revision}, older than this deskmail's "
            f"{head}: {_MIGRATE_HINT}"
        )
    raise SchemaNotCurrent(message, state=state, revision=revision, head=head)


def _ahead(revision: str | None, head: str) -> SchemaAhead:
    return SchemaAhead(
        f"the tickets database is at revision {revision}, newer than this deskmail {build.version()} "
        f"(knows up to {head}): roll forward to the release that migrated it, or restore the database "
        "from the backup taken before that migration",
        state="ahead", revision=revision, head=head,
    )


def _unavailable(url: URL, exc: OperationalError) -> StoreUnavailable:
    # The driver's first line says why (refused, unknown host, authentication);
    # a password it might echo is masked as in the URL.
    lines = str(exc.orig or exc).strip().splitlines()
    reason = lines[0].strip() if lines else type(exc).__name__
    if url.password:
        reason = reason.replace(str(url.password), "***")
    return StoreUnavailable(f"cannot reach the tickets database at {safe_url(url)}: {reason}")
