"""Who a request acts as: API tokens in every mode, the proxy's header only from
trusted proxies, 401 as JSON without credentials, and `deskmail tokens`.

The api runs in process (FastAPI's TestClient) on the real tickets database
(SQLite and PostgreSQL); the CLI runs as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.api.app import create_app
from services.api.context import auth_refusal
from services.common.config import Config, parse_text
from services.localbroker import free_port
from services.tickets import TicketStore
from tests.harness.records import command
from tests.harness.stack import REPO

with warnings.catch_warnings():
    # Starlette 1.x warns at import that its TestClient should move off httpx.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

PROXY = textwrap.dedent("""\
    api:
      listen: 127.0.0.1:8080
      user_header: X-Forwarded-Email
      auth: {mode: proxy, trusted_proxies: [10.1.0.0/16]}
    """)


def config_text(db_url: str, api: str = "") -> str:
    return api + textwrap.dedent(f"""\
        database: {{url: "{db_url}"}}
        organization:
          domains: [example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [support]}}
            - {{email: bob@example.com, name: Bob Builder}}
        queues:
          - key: SUPPORT
            access: [group:support]
            allow_outbound_mail: true
            mailboxes:
              - {{address: support@example.com, ingress: true, accept_external: true}}
        """)


Make = Callable[..., tuple[TestClient, TicketStore, Config]]


@pytest.fixture
def make(db_url: str, tmp_path: Path) -> Iterator[Make]:
    stores: list[TicketStore] = []

    def build(api: str = "", client: str = "127.0.0.1") -> tuple[TestClient, TicketStore, Config]:
        config = parse_text(config_text(db_url, api), str(tmp_path / "deskmail.yaml"))
        store = TicketStore(config.database_url)
        store.migrate()
        stores.append(store)
        if store.get_ticket("SUPPORT-1") is None:
            store.apply(command(1, domain="customer.test"))
        return TestClient(create_app(config, store, None), base_url="http://127.0.0.1:8080",
                          client=(client, 50000)), store, config

    yield build
    for store in stores:
        store.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_signs_in_as_its_member_in_every_mode(make: Make) -> None:
    for api, client_host in (("", "127.0.0.1"), (PROXY, "203.0.113.9")):
        client, store, _ = make(api, client_host)
        _, token = store.create_token("alice@example.com", "script")
        reply = client.post("/api/v1/tickets/SUPPORT-1/replies", headers=bearer(token),
                            json={"text": "Signed by the token.", "internal": True})
        assert reply.status_code == 201, reply.text
        assert reply.json()["author"] == "alice@example.com"
        # the token decides; a body naming someone else is refused, not obeyed
        other = client.post("/api/v1/tickets/SUPPORT-1/replies", headers=bearer(token),
                            json={"text": "x", "internal": True, "author": "bob@example.com"})
        assert other.status_code == 403


@pytest.mark.parametrize("header", [
    "Bearer dmk_not-a-token", "Bearer ", "Basic YWxpY2U6cHc=", "dmk_without_scheme",
])
def test_a_bad_token_is_401_json_never_a_page(make: Make, header: str) -> None:
    client, _, _ = make()
    response = client.get("/api/v1/tickets", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "detail" in response.json()


def test_revoked_and_expired_tokens_are_refused(make: Make) -> None:
    client, store, _ = make()
    token_id, token = store.create_token("alice@example.com", "revoke me")
    assert client.get("/api/v1/tickets", headers=bearer(token)).status_code == 200
    assert store.revoke_token(token_id) and not store.revoke_token(token_id)
    assert client.get("/api/v1/tickets", headers=bearer(token)).status_code == 401
    past = datetime.now(timezone.utc) - timedelta(days=2)
    _, expiring = store.create_token("alice@example.com", "short", expires_at=past + timedelta(days=1), now=past)
    assert client.get("/api/v1/tickets", headers=bearer(expiring)).status_code == 401


def test_a_token_of_someone_no_longer_a_member_is_403(make: Make, db_url: str) -> None:
    client, store, _ = make()
    _, token = store.create_token("zoe@example.com", "left the company")
    response = client.get("/api/v1/tickets", headers=bearer(token))
    assert response.status_code == 403 and "no longer an organization member" in response.json()["detail"]


def test_the_proxy_header_counts_only_from_a_trusted_proxy(make: Make) -> None:
    alice = {"X-Forwarded-Email": "alice@example.com"}
    trusted, _, _ = make(PROXY, "10.1.2.3")
    assert trusted.get("/api/v1/tickets", headers=alice).status_code == 200
    assert trusted.get("/api/v1/tickets").status_code == 401  # the proxy sent no name
    stranger, _, _ = make(PROXY, "203.0.113.9")
    forged = stranger.get("/api/v1/tickets", headers=alice)
    assert forged.status_code == 401 and forged.headers["content-type"].startswith("application/json")
    assert stranger.get("/tickets/SUPPORT-1", headers=alice).status_code == 401  # pages too


def test_no_sign_in_is_allowed_only_on_loopback() -> None:
    def refusal(listen: str, extra: str = "") -> str | None:
        return auth_refusal(parse_text(f"api:\n  listen: '{listen}'\n{extra}"))

    assert refusal("127.0.0.1:8080") is None and refusal("[::1]:8080") is None and refusal("localhost:8080") is None
    message = refusal("0.0.0.0:8080")
    assert message is not None and "api.auth.mode" in message and "0.0.0.0:8080" in message
    assert refusal("0.0.0.0:8080", "  user_header: X-Email\n  auth: {mode: proxy}\n") is None


def deskmail(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_run_api_refuses_to_start_without_sign_in_off_loopback(tmp_path: Path) -> None:
    path = tmp_path / "deskmail.yaml"
    path.write_text(f"api: {{listen: '0.0.0.0:{free_port('127.0.0.1')}'}}\n"
                    + config_text(f"sqlite:///{tmp_path}/t.db"))
    result = deskmail("run", "api", "--config", str(path))
    assert result.returncode == 2
    [line] = [json.loads(line) for line in result.stderr.splitlines()]
    assert line["level"] == "error" and "api.auth.mode is none" in line["reason"]


def test_tokens_cli_prints_the_token_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "deskmail.yaml"
    db = f"sqlite:///{tmp_path}/t.db"
    path.write_text(config_text(db))
    assert deskmail("db", "migrate", "--config", str(path)).returncode == 0
    made = deskmail("tokens", "create", "--as", "Alice@Example.com", "--name", "nightly export",
                    "--expires", "30d", "--config", str(path))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("dmk_") and len(token) > 40
    listed = deskmail("tokens", "list", "--json", "--config", str(path))
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["member"], row["name"], row["state"]) == ("alice@example.com", "nightly export", "active")
    assert token not in listed.stdout + listed.stderr
    assert token.encode() not in (tmp_path / "t.db").read_bytes()  # only the hash is stored
    store = TicketStore(db)
    try:
        assert store.token_member(token) == "alice@example.com"
        revoked = deskmail("tokens", "revoke", str(row["id"]), "--config", str(path))
        assert revoked.returncode == 0 and store.token_member(token) is None
    finally:
        store.close()
    again = deskmail("tokens", "revoke", str(row["id"]), "--config", str(path))
    assert again.returncode == 1 and "no active token" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["--as", "eve@customer.test"], "not a member"),
    (["--as", "alice@example.com", "--expires", "soon"], "90d"),
])
def test_tokens_create_refuses_bad_input_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "deskmail.yaml"
    path.write_text(config_text(f"sqlite:///{tmp_path}/t.db"))
    deskmail("db", "migrate", "--config", str(path))
    result = deskmail("tokens", "create", *args, "--config", str(path))
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr
