"""Sign-in with OpenID Connect (``api.auth.mode: oidc``) against a real provider.

The api runs in process (FastAPI's TestClient) on the real tickets database; the
provider (oidc-provider-mock) runs in a thread on localhost. The browser's part is
played by hand: follow /login to the provider, press its "authorize" button
(a form post naming the user), and bring the code back to /auth/callback.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from services.api.app import create_app
from services.api.session import SESSION_COOKIE
from services.common.config import parse_text
from services.tickets import TicketStore
from tests.harness import oidc
from tests.harness.records import command

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette 1.x warns at import about the TestClient
    from fastapi.testclient import TestClient

# The provider's own use of Authlib's older interfaces warns; deskmail's code does not.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:get_jwt_config:DeprecationWarning")]

ORIGIN = "http://127.0.0.1:8080"


@pytest.fixture(scope="module")
def provider() -> Iterator[oidc.Provider]:
    with oidc.provider() as running:
        yield running


def config_text(db_url: str, issuer: str, secret_file: Path) -> str:
    return textwrap.dedent(f"""\
        database: {{url: "{db_url}"}}
        api:
          listen: 127.0.0.1:8080
          public_url: {ORIGIN}
          session_secret: {{env: DM_TEST_SESSION_SECRET}}
          auth:
            mode: oidc
            oidc: {{issuer: "{issuer}", client_id: {oidc.CLIENT_ID}, client_secret: {{file: {secret_file}}}}}
        organization:
          domains: [example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [support]}}
            - {{email: bob@example.com, name: Bob Builder}}
        queues:
          - key: SUPPORT
            access: [group:support]
            mailboxes:
              - {{address: support@example.com, ingress: true, accept_external: true}}
        """)


Make = Callable[[], tuple[TestClient, TicketStore]]


@pytest.fixture
def make(db_url: str, tmp_path: Path, provider: oidc.Provider, monkeypatch: pytest.MonkeyPatch) -> Iterator[Make]:
    monkeypatch.setenv("DM_TEST_SESSION_SECRET", "session-secret-for-tests-0123456789")
    secret = tmp_path / "oidc-secret"
    secret.write_text(oidc.CLIENT_SECRET)
    stores: list[TicketStore] = []

    def build() -> tuple[TestClient, TicketStore]:
        config = parse_text(config_text(db_url, provider.issuer, secret), str(tmp_path / "deskmail.yaml"))
        store = TicketStore(config.database_url)
        store.migrate()
        stores.append(store)
        if store.get_ticket("SUPPORT-1") is None:
            store.apply(command(1, domain="customer.test"))
        return TestClient(create_app(config, store, None), base_url=ORIGIN, follow_redirects=False), store

    yield build
    for store in stores:
        store.close()


def authorize(client: TestClient, sub: str, next_path: str = "/") -> str:
    """/login, then the provider's authorize button for ``sub``: the callback URL it sends back."""
    login = client.get("/login", params={"next": next_path})
    assert login.status_code == 303, login.text
    at_provider = login.headers["location"]
    query = parse_qs(urlsplit(at_provider).query)
    assert query["code_challenge_method"] == ["S256"] and query["redirect_uri"] == [f"{ORIGIN}/auth/callback"]
    answer = httpx.post(at_provider, data={"sub": sub}, timeout=10)
    assert answer.status_code == 302, answer.text
    back = answer.headers["location"]
    assert back.startswith(f"{ORIGIN}/auth/callback?")
    return back.removeprefix(ORIGIN)


def test_a_member_signs_in_sees_their_queue_and_signs_out(make: Make, provider: oidc.Provider) -> None:
    client, _ = make()
    page = client.get("/tickets/SUPPORT-1", headers={"Accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Ftickets%2FSUPPORT-1"
    api = client.get("/api/v1/tickets")
    assert api.status_code == 401 and api.headers["content-type"].startswith("application/json")

    provider.set_user("alice", email="Alice@Example.com", email_verified=True)
    done = client.get(authorize(client, "alice", "/tickets/SUPPORT-1"))
    assert done.status_code == 303 and done.headers["location"] == "/tickets/SUPPORT-1"
    cookie = done.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    ticket = client.get("/tickets/SUPPORT-1")
    assert ticket.status_code == 200 and "Sign out" in ticket.text
    assert client.get("/api/v1/tickets").json()["total"] == 1  # the session works for the page's own API calls

    token = client.cookies.get("deskmail_csrf")
    out = client.post("/logout", data={"csrf_token": token}, headers={"Origin": ORIGIN})
    assert out.status_code == 200 and "signed out" in out.text
    assert client.get("/tickets/SUPPORT-1", headers={"Accept": "text/html"}).status_code == 303


def test_someone_without_access_or_not_a_member_is_refused(make: Make, provider: oidc.Provider) -> None:
    client, _ = make()
    provider.set_user("bob", email="bob@example.com", email_verified=True)
    assert client.get(authorize(client, "bob")).status_code == 303
    assert client.get("/tickets/SUPPORT-1").status_code == 403
    assert client.get("/api/v1/tickets").json()["total"] == 0

    stranger, _ = make()
    provider.set_user("eve", email="eve@elsewhere.test", email_verified=True)
    refused = stranger.get(authorize(stranger, "eve"), headers={"Accept": "text/html"})
    assert refused.status_code == 403 and "eve@elsewhere.test is not a member" in refused.text
    assert SESSION_COOKIE not in refused.headers.get("set-cookie", "")

    unverified, _ = make()
    provider.set_user("mallory", email="alice@example.com", email_verified=False)
    refused = unverified.get(authorize(unverified, "mallory"))
    assert refused.status_code == 403 and "not verified" in refused.text


def test_a_callback_must_come_back_to_the_browser_that_started_it(make: Make, provider: oidc.Provider) -> None:
    provider.set_user("alice", email="alice@example.com", email_verified=True)
    victim, _ = make()
    attacker, _ = make()
    # The attacker's own code, planted in the victim's browser (login CSRF): no sign-in of the victim's matches.
    planted = authorize(attacker, "alice")
    assert victim.get(planted).status_code == 400
    # The victim's sign-in, with the state altered.
    back = authorize(victim, "alice")
    assert victim.get(back.replace("state=", "state=x")).status_code == 400
    assert victim.get(back).status_code == 303
    # A code is used once.
    again = victim.get(back)
    assert again.status_code in (400, 403) and SESSION_COOKIE not in again.headers.get("set-cookie", "")


def test_a_forged_session_cookie_counts_for_nothing(make: Make) -> None:
    client, _ = make()
    client.cookies.set(SESSION_COOKIE, "eyJlbWFpbCI6ImFsaWNlQGV4YW1wbGUuY29tIiwiZXhwIjo5OTk5OTk5OTk5fQ.AAAA")
    assert client.get("/api/v1/tickets").status_code == 401
