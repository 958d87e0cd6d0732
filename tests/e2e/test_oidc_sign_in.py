"""Signing in with OpenID Connect, in real Chromium against a real `deskmail run api`.

A real provider (oidc-provider-mock, in a thread on localhost) signs agents in on
its own authorization page; the api listens on 127.0.0.1 and the provider sends
the browser back there. Alice (support group) sees only SUPPORT and replies;
she signs out; Bob, whose access is SALES only, signs in in another browser
context and gets 403 on Alice's ticket, on the page and in the API.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from services.localbroker import free_port
from services.tickets import TicketStore
from tests.harness import oidc
from tests.harness.records import command
from tests.harness.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:get_jwt_config:DeprecationWarning")]

SESSION_SECRET = "e2e-session-secret-0123456789abcdef"


@pytest.fixture
def provider() -> Iterator[oidc.Provider]:
    with oidc.provider(("alice", {"email": "alice@example.com", "email_verified": True}),
                       ("bob", {"email": "bob@example.com", "email_verified": True})) as running:
        yield running


@pytest.fixture
def stack(tmp_path: Path, broker: Any, unique: Callable[[str], str], provider: oidc.Provider) -> Iterator[Stack]:
    port = free_port("127.0.0.1")
    secret = tmp_path / "client-secret"
    secret.write_text(oidc.CLIENT_SECRET)
    topics = {k: unique(f"oidc-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    text = textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("oidc-group")}
          topics: {{inbound: {topics["inbound"]}, commands: {topics["commands"]}, outbound: {topics["outbound"]},
                   events: {topics["events"]}, deadletter: {topics["deadletter"]}}}
        database: {{url: "sqlite:///{tmp_path / 'tickets.db'}"}}
        data_dir: {tmp_path / "data"}
        api:
          listen: 127.0.0.1:{port}
          public_url: http://127.0.0.1:{port}
          session_secret: {{env: E2E_SESSION_SECRET}}
          auth:
            mode: oidc
            oidc: {{issuer: "{provider.issuer}", client_id: {oidc.CLIENT_ID}, client_secret: {{file: {secret}}}}}
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
          - key: SALES
            access: [bob@example.com]
            mailboxes:
              - {{address: sales@example.com, ingress: true, accept_external: true}}
        """)
    instance = Stack(text, tmp_path, broker.bootstrap, env={"E2E_SESSION_SECRET": SESSION_SECRET})
    instance.ports["api"] = port  # the redirect URI needs the port before the api starts
    instance.create_topics()
    yield instance
    instance.stop()


def sign_in(page: Page, base: str, issuer: str, who: str, path: str) -> None:
    """Open ``path``, be sent to the provider, press ``who``'s button, come back."""
    # The provider's page styles itself from a CDN: not needed, and not reachable here.
    page.route(re.compile(r"^https://cdn\.jsdelivr\.net/"), lambda route: route.abort())
    page.goto(f"{base}{path}")
    expect(page).to_have_url(re.compile(rf"^{re.escape(issuer)}/oauth2/authorize\?"))
    page.get_by_role("button", name=who, exact=True).click()
    expect(page).to_have_url(f"{base}{path}")


def test_sign_in_see_only_your_queues_reply_sign_out(stack: Stack, provider: oidc.Provider, browser: Browser) -> None:
    stack.start("api")
    store = TicketStore(stack.config.database_url)
    try:
        store.apply(command(1, domain="customer.test", subject="Printer on fire"))
        store.apply(command(2, domain="customer.test", subject="Bulk order", queue="SALES",
                            mailbox="sales@example.com"))
    finally:
        store.close()
    base = f"http://127.0.0.1:{stack.ports['api']}"

    alice = browser.new_page()
    sign_in(alice, base, provider.issuer, "alice", "/")
    expect(alice.locator("table.queues")).to_contain_text("SUPPORT")
    expect(alice.locator("table.queues")).not_to_contain_text("SALES")
    expect(alice.locator("main")).to_contain_text("Printer on fire")
    expect(alice.locator("main")).not_to_contain_text("Bulk order")
    [session] = [c for c in alice.context.cookies() if c["name"] == "deskmail_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax" and not session["secure"]  # http: not Secure

    alice.goto(f"{base}/tickets/SUPPORT-1")
    alice.fill("#text", "Looking into it (internal).")
    alice.click("#send")
    alice.wait_for_url(re.compile(r"/tickets/SUPPORT-1#c\d+$"))
    entry = alice.locator(f"#c{alice.url.rsplit('#c', 1)[1]}")
    expect(entry).to_contain_text("Looking into it (internal).")
    expect(entry).to_contain_text("alice@example.com")
    response = alice.goto(f"{base}/tickets/SALES-1")
    assert response is not None and response.status == 403

    alice.goto(f"{base}/")
    alice.get_by_role("button", name="Sign out").click()
    expect(alice.locator("main")).to_contain_text("signed out")
    assert not [c for c in alice.context.cookies() if c["name"] == "deskmail_session"]
    alice.goto(f"{base}/tickets/SUPPORT-1")
    expect(alice).to_have_url(re.compile(rf"^{re.escape(provider.issuer)}/oauth2/authorize\?"))

    bob = browser.new_context().new_page()
    sign_in(bob, base, provider.issuer, "bob", "/queues/SALES")
    expect(bob.locator("main")).to_contain_text("Bulk order")
    refused = bob.goto(f"{base}/tickets/SUPPORT-1")
    assert refused is not None and refused.status == 403
    expect(bob.locator("main")).to_contain_text("bob@example.com has no access to queue SUPPORT")
    seen = {"bob's 403 page": bob.content()}
    # the JSON API applies the same rule to the same session
    api = bob.request.get(f"{base}/api/v1/tickets/SUPPORT-1")
    assert api.status == 403 and "has no access to queue SUPPORT" in api.text(), api.text()
    assert bob.request.get(f"{base}/api/v1/tickets/SALES-1").json()["key"] == "SALES-1"
    assert "Traceback" not in stack.log("api")

    # neither the client secret nor the session secret reaches a log, /metrics, a page or the API
    for path in ("/", "/queues/SALES", "/tickets/SALES-1", "/api/v1/tickets", "/openapi.json", "/metrics"):
        seen[path] = bob.request.get(f"{base}{path}").text()
    seen["api log"] = stack.log("api")
    for what, secret in {"client secret": oidc.CLIENT_SECRET, "session secret": SESSION_SECRET}.items():
        leaks = [where for where, text in seen.items() if secret in text]
        assert not leaks, f"the {what} appears in {leaks}"
