"""Alembic runtime environment for the tickets database.

Configured in code (see ``services.tickets.migrations.alembic_config``); there
is no alembic.ini and no logging configuration here: the process owns logging.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from services.tickets.search import include_object
from services.tickets.tables import metadata

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # The search objects (migration 0006) are engine-specific and not in the
        # metadata: an autogenerate run must not propose dropping them.
        include_object=include_object,
        # SQLite supports transactional DDL too; one transaction per upgrade
        # means a failed migration leaves no half-built schema behind.
        transactional_ddl=True,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # The caller's transaction (and its migration lock) wraps the upgrade.
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None, "sqlalchemy.url is not set"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
