"""Shared fixtures: real services started by the test suite.

Markers (declared in pyproject.toml):

``integration``
    The test talks to real services started here: the Tansu broker
    (``broker``), Dovecot (``dovecot``), PostgreSQL (``postgres_url``) or an
    S3-compatible server (``s3``, moto in server mode).
    Tests under ``tests/integration/`` get it automatically.
``e2e``
    The test runs the deskmail processes end to end against those services.
    Tests under ``tests/e2e/`` get it automatically.
``postgres``
    The test needs PostgreSQL; tests using the ``postgres_url`` fixture get
    it automatically.

Select with ``-m``, e.g. ``scripts/test -m "not e2e"``. A missing service
program is an error, never a skip: the fixture fails with a message naming the
package to install (``scripts/install-deps`` installs them all).
"""

from __future__ import annotations

import shutil
import uuid
import sys
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]
# The harness is imported as ``tests.harness``; make that work however pytest
# was launched (``python -m pytest`` adds the cwd, the ``pytest`` script does not).
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from services.localbroker import BrokerStartError, LocalBroker  # noqa: E402
from tests.harness.broker import unique_name  # noqa: E402

_DIR_MARKERS = {"integration": "integration", "e2e": "e2e"}

# A test using the broker is run again, twice at most, only when pytest-timeout stopped it
# (a kafka-python call stuck in its IO loop: docs/architecture.md, "kafka-python: the stuck
# client call"). pytest-timeout fails with "Failed: Timeout (>240.0s) from pytest-timeout.";
# pytest-rerunfailures matches only_rerun with re.search against "<type>: <message>" of the
# failure and of the exceptions chained to it (older releases: the crash message), so
# the anchored pattern matches nothing else, such as a KafkaTimeoutError or TimeoutExpired.
PYTEST_TIMEOUT_FAILURE = r"^Failed: Timeout \(>[0-9.]+s\) from pytest-timeout"
BROKER_RERUNS = 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            rel = Path(str(item.path)).resolve().relative_to(_REPO / "tests")
        except ValueError:
            continue
        marker = _DIR_MARKERS.get(rel.parts[0]) if rel.parts else None
        if marker and item.get_closest_marker(marker) is None:
            item.add_marker(marker)
        if "postgres_url" in getattr(item, "fixturenames", ()) and item.get_closest_marker("postgres") is None:
            item.add_marker("postgres")
        if "broker" in getattr(item, "fixturenames", ()) and item.get_closest_marker("flaky") is None:
            item.add_marker(pytest.mark.flaky(reruns=BROKER_RERUNS, only_rerun=[PYTEST_TIMEOUT_FAILURE]))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # pytest-timeout arms one timer around the whole runtest protocol, and
    # pytest-rerunfailures runs the test again inside it: without this, a rerun would run
    # with no timeout at all (pytest-dev/pytest-rerunfailures#99). Arm a fresh timer for
    # each rerun, before its fixtures are set up; pytest-timeout cancels the last one.
    if getattr(item, "execution_count", 1) <= 1:
        return
    import pytest_timeout

    settings = pytest_timeout._get_item_settings(item)
    if settings.timeout and not settings.func_only:  # func_only timers are per call already
        item.config.pluginmanager.hook.pytest_timeout_set_timer(item=item, settings=settings)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A running Tansu broker (memory storage) for the whole session.

    Use ``broker.bootstrap`` ("127.0.0.1:PORT") as ``bootstrap_servers``.
    Topics and groups are shared across tests: take names from ``unique``.
    Its log is ``<pytest basetemp>/broker0/tansu.log``.
    """
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    instance = LocalBroker(log_path=log_path)
    error = None
    try:
        instance.start()
    except BrokerStartError as exc:
        error = f"the local Kafka broker did not start: {exc}"
    if error:  # failed outside the except block: no chained traceback
        pytest.fail(error, pytrace=False)
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A running Dovecot IMAP server (``tests.harness.dovecot.DovecotServer``).

    Create users with ``dovecot.add_user(login, password)`` (use ``unique``
    for logins: the server is shared by the session). At the end of the
    session its log is copied to ``<pytest basetemp>/dovecot0/dovecot.log``.
    """
    from tests.harness.dovecot import DovecotError, DovecotServer

    server = DovecotServer()
    error = None
    try:
        server.start()
    except DovecotError as exc:
        error = f"Dovecot did not start: {exc}"
    if error:
        pytest.fail(error, pytrace=False)
    try:
        yield server
    finally:
        try:
            shutil.copy(server.log_path, tmp_path_factory.mktemp("dovecot") / "dovecot.log")
        except OSError:
            pass
        server.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A running S3-compatible server (``tests.harness.s3.S3Server``, moto in server
    mode) for the whole session; take a fresh bucket per test with ``s3.bucket()``.
    Its log is ``<pytest basetemp>/s3-0/moto.log``. Without moto it fails, naming the package."""
    from tests.harness.s3 import S3Server, S3StartError

    server = S3Server(tmp_path_factory.mktemp("s3-") / "moto.log")
    error = None
    try:
        server.start()
    except S3StartError as exc:
        error = f"the S3 server did not start: {exc}"
    if error:
        pytest.fail(error, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster (unix socket only) for the whole session."""
    from tests.harness.postgres import PostgresCluster

    cluster = PostgresCluster()
    try:
        cluster.start()
    except Exception as exc:
        try:
            cluster.stop()
        except Exception:
            pass
        pytest.fail(
            f"PostgreSQL did not start ({type(exc).__name__}: {exc}); "
            "it needs the Debian package postgresql (scripts/install-deps installs it)",
            pytrace=False,
        )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: Any) -> str:
    """SQLAlchemy URL of the session's PostgreSQL cluster.

    Example: ``postgresql+psycopg://postgres@/postgres?host=<socket folder>``.
    """
    return str(postgres_cluster.url)


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty tickets database: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/tickets.db"
    cluster = request.getfixturevalue("postgres_cluster")
    return str(cluster.create_database(f"t_{uuid.uuid4().hex}"))


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique(prefix) -> str``: a fresh name for a topic, group, mailbox, user...

    Names carry the test's name, so they can be traced in the broker and
    Dovecot logs, and never repeat within or across sessions. They are at
    most 60 characters of ``[A-Za-z0-9._-]``, so also usable as the local
    part of an e-mail address.
    """
    test = request.node.name

    def make(prefix: str = "t") -> str:
        return unique_name(f"{prefix}-{test}", max_len=60)

    return make


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, object]) -> dict[str, object]:
    """Debian's Chromium (package chromium) for pytest-playwright's ``browser`` and
    ``page`` fixtures; Playwright's own browser downloads are never used."""
    return {
        **browser_type_launch_args,
        "executable_path": "/usr/bin/chromium",
        "args": ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"],
    }
