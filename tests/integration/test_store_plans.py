"""The threading lookups' plans on PostgreSQL stay index lookups whatever the statistics.

psycopg prepares a statement on the server from its fifth run on a connection, and
PostgreSQL may then keep a generic plan made while the tables were empty (a fresh
database, before autovacuum first analyzes them). With the queue condition on
``tickets`` such a plan reached the ticket through a queue index and filtered every
ticket of the queue, for each reply. These tests plan the statements as the
executor sends them, generic and on empty tables, and read the plan.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ClauseElement

from services.tickets import TicketStore
from services.tickets import statements as st
from services.tickets.driver import Executor

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture
def conn(postgres_cluster: Any) -> Iterator[Connection]:
    """A connection to a fresh, migrated, empty database, in a transaction."""
    with TicketStore(str(postgres_cluster.create_database(f"t_{uuid.uuid4().hex}"))) as store:
        store.migrate()
        with store.engine.connect() as c, c.begin():
            c.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
            yield c


def generic_plan(conn: Connection, statement: ClauseElement, params: Mapping[str, Any]) -> str:
    """EXPLAIN of ``statement``'s generic plan, with the SQL the executor runs."""
    shape = Executor(conn).prepared(statement, None, False).shape(params)
    names = list(shape.names or ())
    sql = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", shape.sql)
    values = [params[name] if index < 0 else params[name][index] for name, index, _, _ in shape.slots]
    conn.exec_driver_sql(f"PREPARE lookup AS {sql}")
    literals = ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)  # the tests' own strings
    plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN EXECUTE lookup({literals})"))
    conn.exec_driver_sql("DEALLOCATE lookup")
    return plan


def test_a_reply_reaches_its_ticket_by_id_not_through_the_queue(conn: Connection) -> None:
    plan = generic_plan(conn, st.THREAD_MATCHES, {"message_ids": ["<a@x>", "<b@x>"], "queue": "SUPPORT"})
    assert "Join Filter" not in plan, plan
    assert re.search(r"Index Scan using pk_tickets on tickets", plan), plan
    assert "ix_tickets_queue" not in plan, plan


def test_a_ticket_key_in_a_subject_is_looked_up_by_the_unique_key(conn: Connection) -> None:
    plan = generic_plan(conn, st.TICKET_BY_KEY, {"key": "SUPPORT-1"})
    assert "uq_tickets_key" in plan, plan
    assert "Filter" not in plan, plan
