"""What every `deskmail` command shares: the --config and --bootstrap options,
loading the configuration, and turning expected failures into one line and an
exit code.

Exit codes (documented in README's "Commands"):

- 0: done;
- 1: the operation failed (a mail refused, a ticket not found, a check failed);
- 2: usage or configuration error (a bad option, a bad deskmail.yaml);
- 3: a dependency is unreachable or not ready (the database or broker cannot be
  reached, the database is not migrated);
- 4: the database was migrated by a newer deskmail: this release cannot use it
  (roll forward, or restore the database from before that migration).

Nothing expected prints a traceback; an unexpected error still does, since that
is a bug to report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click

from services.common import config as config_mod
from services.common.config import Config, ConfigError

OK, FAILED, USAGE, UNAVAILABLE, DATABASE_NEWER = 0, 1, 2, 3, 4

F = TypeVar("F", bound=Callable[..., Any])

config_option = click.option(
    "--config", "config_path", envvar="DESKMAIL_CONFIG", type=click.Path(dir_okay=False),
    help="deskmail.yaml (or DESKMAIL_CONFIG).",
)
bootstrap_option = click.option(
    "--bootstrap", envvar="DESKMAIL_BOOTSTRAP", default=None,
    help="Kafka bootstrap servers, comma separated; overrides kafka.bootstrap_servers.",
)


class Unavailable(click.ClickException):
    """A dependency cannot be reached or is not ready: exit code 3."""

    exit_code = UNAVAILABLE


class DatabaseNewer(click.ClickException):
    """The database is at a revision a newer deskmail made: exit code 4."""

    exit_code = DATABASE_NEWER


class BadValue(click.ClickException):
    """A value the command cannot use (an unknown status, an assignee who may not
    have the ticket, a cursor it did not print): one line, exit code 2, without
    the usage text click prints for a malformed command line."""

    exit_code = USAGE


def load_config(path: str | None, *, what: str = "pass --config FILE or set DESKMAIL_CONFIG") -> Config:
    """Load and validate deskmail.yaml, or exit 2 with every problem on its own line."""
    if not path:
        raise click.UsageError(f"no configuration: {what}")
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"{exc.path}: {problem}", err=True)
        raise SystemExit(USAGE) from None
    except OSError as exc:
        raise click.UsageError(f"cannot read {path}: {exc.strerror}") from None


def bootstrap_servers(value: str | None, config: Config | None = None) -> list[str] | None:
    """--bootstrap as a list; without it, the config's servers (None when neither is set)."""
    if value:
        return [s.strip() for s in value.split(",") if s.strip()]
    if config is not None and config.kafka.bootstrap_servers:
        return list(config.kafka.bootstrap_servers)
    return None


def fail(message: str) -> NoReturn:
    """The operation failed: one line on stderr, exit code 1."""
    raise click.ClickException(message)


@contextmanager
def broker_errors(what: str, refusals: bool = False) -> Iterator[None]:
    """A broker that cannot be reached is exit code 3, not a traceback. With
    ``refusals``, any other error the broker answers (not authorized, unknown
    group, ...) is the operation failing: one line, exit code 1."""
    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    from services.common.errors import Transient

    try:
        yield
    except (KafkaConnectionError, KafkaTimeoutError, Transient) as exc:
        raise Unavailable(f"{what}: the Kafka broker is unreachable ({type(exc).__name__}: {exc})") from None
    except KafkaError as exc:
        if not refusals:
            raise
        fail(f"{what}: {type(exc).__name__}: {exc}")


@contextmanager
def store_errors() -> Iterator[None]:
    """The database unreachable or not migrated is exit code 3, migrated by a
    newer deskmail exit code 4; a database URL that cannot work is a
    configuration error (exit code 2)."""
    from services.tickets import BadDatabaseUrl, SchemaAhead, SchemaNotCurrent, StoreUnavailable

    try:
        yield
    except SchemaAhead as exc:
        raise DatabaseNewer(str(exc)) from None
    except (StoreUnavailable, SchemaNotCurrent) as exc:
        raise Unavailable(str(exc)) from None
    except BadDatabaseUrl as exc:
        raise click.UsageError(str(exc)) from None


@contextmanager
def open_store(config: Config) -> Iterator[Any]:
    """The tickets store at the schema this release expects; it never migrates
    (only `deskmail db migrate` does)."""
    from services.tickets import TicketStore

    with store_errors():
        store = TicketStore(config.database_url)
        try:
            store.require_current()
            yield store
        finally:
            store.close()


def kafka_clients(config: Config, bootstrap: str | None) -> Any:
    """The Kafka client builder for --bootstrap or the config's servers (exit 2 if neither)."""
    from services.common.kafka import Kafka

    servers = bootstrap_servers(bootstrap, config)
    if not servers:
        raise click.UsageError("no Kafka broker: pass --bootstrap HOST:PORT or set kafka.bootstrap_servers")
    return Kafka(config, servers)
