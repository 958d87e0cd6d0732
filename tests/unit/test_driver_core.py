"""The SQLAlchemy attributes services/tickets/driver.py relies on beyond the public
API, pinned so an upgrade that changes them fails here, not in the ticketer."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import bindparam, create_engine, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError

from services.tickets import statements as st
from services.tickets.driver import Executor
from services.tickets.tables import metadata, tickets

SQLITE = sqlite.dialect()
POSTGRES = postgresql.psycopg.dialect()  # type: ignore[attr-defined]


def test_positional_binds_are_listed_in_order_and_named_by_binds() -> None:
    compiled = st.KNOWN_MESSAGE.compile(dialect=SQLITE)
    assert compiled.positiontup == ["queue", "message_id"]
    assert {"queue", "message_id"} <= set(compiled.binds)
    assert compiled.binds["message_id"].type.__class__.__name__ == "String"


def test_the_insert_columns_are_the_column_keys_and_the_id_comes_back_as_core_reads_it() -> None:
    on_sqlite = insert(tickets).compile(dialect=SQLITE, column_keys=["key", "queue"])
    assert str(on_sqlite) == 'INSERT INTO tickets ("key", queue) VALUES (?, ?)'
    assert not on_sqlite.effective_returning and SQLITE.postfetch_lastrowid
    on_postgres = insert(tickets).compile(dialect=POSTGRES, column_keys=["key", "queue"])
    assert [c.name for c in on_postgres.effective_returning] == ["id"]
    assert "RETURNING tickets.id" in str(on_postgres)
    many = insert(tickets).compile(dialect=POSTGRES, column_keys=["key", "queue"], for_executemany=True)
    assert not many.effective_returning and "RETURNING" not in str(many)


def test_an_expanding_list_is_rendered_by_the_compiler_with_its_expansion_named() -> None:
    statement = select(tickets.c.id).where(tickets.c.key.in_(bindparam("keys", expanding=True)))
    state = statement.compile(dialect=SQLITE).construct_expanded_state({"keys": [None, None]})
    assert state.statement.endswith("IN (?, ?)")
    assert state.parameter_expansion == {"keys": ["keys_1", "keys_2"]}
    assert state.positiontup == ["keys_1", "keys_2"]
    named = statement.compile(dialect=POSTGRES).construct_expanded_state({"keys": [None]})
    assert named.positiontup is None and list(named.parameters) == ["keys_1"]


def test_driver_errors_become_sqlalchemy_errors() -> None:
    wrapped = DBAPIError.instance("INSERT", (), sqlite3.IntegrityError("UNIQUE"), sqlite3.Error, dialect=SQLITE)
    assert isinstance(wrapped, IntegrityError)


def test_no_column_has_a_python_side_default_the_driver_would_not_run() -> None:
    assert [f"{t.name}.{c.name}" for t in metadata.sorted_tables for c in t.columns
            if c.default is not None or c.onupdate is not None] == []


def test_the_executor_refuses_a_connection_without_a_transaction() -> None:
    engine = create_engine("sqlite://")
    with engine.connect() as conn:
        with pytest.raises(RuntimeError, match="begin a transaction"):
            Executor(conn)
        with conn.begin():
            with Executor(conn) as sql:
                assert sql.execute(select(bindparam("x", 7).label("x"))).all() == [(7,)]
