"""TicketStore refuses a database URL it cannot use when it is built, with a
one-line message that never holds the password (no database is needed)."""

from __future__ import annotations

import pytest

from services.tickets import BadDatabaseUrl, TicketStore


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("not a url", "is not a database URL"),
        ("", "is not a database URL"),
        ("postgresql+psycopg://u:s3cret-pw@host:port/db", "is not a database URL"),
        ("mysql://u:s3cret-pw@host/db", "names the backend 'mysql'"),
        ("oracle://u:s3cret-pw@host/db", "names the backend 'oracle'"),
        ("postgresql+nosuchdriver://u:s3cret-pw@host/db", "cannot be used"),
    ],
)
def test_an_unusable_url_is_a_bad_database_url(url: str, says: str) -> None:
    with pytest.raises(BadDatabaseUrl) as info:
        TicketStore(url)
    message = str(info.value)
    assert says in message
    assert "s3cret-pw" not in message and "\n" not in message
    assert isinstance(info.value, ValueError)
    if "u:" in url and "port/db" not in url:
        assert "u:***@host/db" in message  # names the URL, password masked


def test_a_bad_url_is_not_chained_to_an_error_quoting_it() -> None:
    with pytest.raises(BadDatabaseUrl) as info:
        TicketStore("postgresql+psycopg://u:s3cret-pw@host:port/db")
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "postgresql+psycopg://u:p@127.0.0.1:1/db", "postgresql://u:p@h/db"],
)
def test_a_usable_url_builds_without_connecting(url: str) -> None:
    TicketStore(url).close()
