"""TicketStore's schema check and connection check, on SQLite and PostgreSQL.

``schema_state`` and ``require_current`` read Alembic's version table and never
migrate; ``ping`` and both of them raise ``StoreUnavailable`` (one line, no
password) when the database cannot be reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command as alembic_command
from alembic.migration import MigrationContext
from sqlalchemy import text

from services.localbroker import free_port
from services.common import build
from services.tickets import SchemaAhead, SchemaNotCurrent, StoreUnavailable, TicketStore
from services.tickets.migrations import alembic_config
from tests.harness.postgres import PostgresCluster

pytestmark = pytest.mark.integration

HEAD = "0011"


@pytest.fixture
def store(db_url: str) -> Iterator[TicketStore]:
    """A store on a fresh, empty (never migrated) database."""
    with TicketStore(db_url) as s:
        yield s


def revision(store: TicketStore) -> str | None:
    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def alembic_on_store(store: TicketStore, direction: str, target: str) -> None:
    """Run an Alembic downgrade or upgrade on the store's own engine."""
    url = store.engine.url.render_as_string(hide_password=False)
    with store.engine.begin() as conn:
        getattr(alembic_command, direction)(alembic_config(url, conn), target)


def not_current(store: TicketStore) -> SchemaNotCurrent:
    with pytest.raises(SchemaNotCurrent) as info:
        store.require_current()
    return info.value


# -- schema_state and require_current ----------------------------------------


def test_a_fresh_database_is_missing_and_stays_unmigrated(store: TicketStore) -> None:
    assert store.schema_state() == "missing"
    error = not_current(store)
    assert str(error) == "the tickets database is not migrated yet: run `deskmail db migrate`"
    assert (error.state, error.revision, error.head) == ("missing", None, HEAD)
    assert revision(store) is None  # neither call migrated


def test_a_migrated_database_is_current(store: TicketStore) -> None:
    store.migrate()
    assert store.schema_state() == "current"
    store.require_current()
    store.ping()


def test_a_database_one_revision_behind_is_behind(store: TicketStore) -> None:
    store.migrate()
    alembic_on_store(store, "downgrade", "-1")
    assert revision(store) == "0010"
    assert store.schema_state() == "behind"
    error = not_current(store)
    assert str(error) == (
        "the tickets database is at revision 0010, older than this deskmail's 0011: "
        "run `deskmail db migrate`"
    )
    assert (error.state, error.revision, error.head) == ("behind", "0010", HEAD)
    assert revision(store) == "0010"
    store.migrate()
    assert store.schema_state() == "current"


def test_a_database_downgraded_to_base_is_missing(store: TicketStore) -> None:
    store.migrate()
    alembic_on_store(store, "downgrade", "base")  # alembic_version stays, empty
    assert store.schema_state() == "missing"


def test_a_revision_this_code_does_not_know_is_ahead(store: TicketStore) -> None:
    store.migrate()
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    assert store.schema_state() == "ahead"
    error = not_current(store)
    assert isinstance(error, SchemaAhead)
    assert str(error) == (
        f"the tickets database is at revision 9999_future, newer than this deskmail {build.version()} "
        f"(knows up to {HEAD}): roll forward to the release that migrated it, or restore the database "
        "from the backup taken before that migration"
    )
    assert (error.state, error.revision, error.head) == ("ahead", "9999_future", HEAD)
    assert store.schema_revisions() == ("ahead", "9999_future", HEAD)
    # migrating cannot help: refused, nothing changed
    with pytest.raises(SchemaAhead) as refused:
        store.migrate()
    assert str(refused.value) == str(error)
    assert revision(store) == "9999_future"


# -- StoreUnavailable ----------------------------------------------------------


def assert_unavailable(store: TicketStore, *secrets: str) -> list[str]:
    """Every check raises StoreUnavailable; returns the messages after checking
    they are one line and hold none of ``secrets``."""
    messages = []
    for check in (store.ping, store.schema_state, store.require_current):
        with pytest.raises(StoreUnavailable) as info:
            check()
        message = str(info.value)
        assert "\n" not in message
        assert not any(secret in message for secret in secrets), message
        assert info.value.__cause__ is None and info.value.__suppress_context__
        messages.append(message)
    return messages


def test_nothing_listening_on_the_port_is_unavailable() -> None:
    port = free_port("127.0.0.1")
    url = f"postgresql+psycopg://deskmail:s3cret-pw@127.0.0.1:{port}/tickets?connect_timeout=5"
    with TicketStore(url) as store:  # construction does not connect
        messages = assert_unavailable(store, "s3cret-pw")
    expected = f"cannot reach the tickets database at postgresql+psycopg://deskmail:***@127.0.0.1:{port}/tickets"
    for message in messages:
        assert message.startswith(expected), message
        assert "refused" in message.lower() or "failed" in message.lower(), message


def test_an_sqlite_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder" / "tickets.db"
    # A URI filename in read-only mode: the store neither creates the folder nor the file.
    with TicketStore(f"sqlite:///file:{missing}?mode=ro&uri=true") as store:
        messages = assert_unavailable(store)
    assert all("unable to open database file" in m for m in messages), messages
    assert not missing.parent.exists()


@pytest.mark.postgres
def test_a_database_the_server_does_not_have_is_unavailable(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.url_for("no_such_database")
    with TicketStore(url) as store:
        messages = assert_unavailable(store)
    assert all('"no_such_database" does not exist' in m for m in messages), messages
