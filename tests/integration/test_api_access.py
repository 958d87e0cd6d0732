"""Who sees what: a queue's ``access`` list and ``organization.admins`` decide what
the pages and the JSON API show, and the page and the API refuse alike (403 with
the reason; JSON for the API).

The api runs in process (FastAPI's TestClient) on the real tickets database
(SQLite and PostgreSQL); agents are named by the proxy's header from a trusted
client host, or by an API token.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.api.app import create_app
from services.common.config import parse_text
from services.tickets import TicketStore
from tests.harness.records import command

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette 1.x warns at import about the TestClient
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

ORIGIN = "http://127.0.0.1:8080"
ALICE = {"X-Forwarded-Email": "alice@example.com"}  # support group: SUPPORT only
BOB = {"X-Forwarded-Email": "bob@example.com"}  # named on SALES only
CAROL = {"X-Forwarded-Email": "carol@example.com"}  # an admin, in no queue's access list


def config_text(db_url: str, mode: str) -> str:
    auth = "{user_header: X-Forwarded-Email, auth: {mode: proxy}, " if mode == "proxy" else "{"
    return textwrap.dedent(f"""\
        database: {{url: "{db_url}"}}
        api: {auth}listen: 127.0.0.1:8080}}
        organization:
          domains: [example.com]
          admins: [carol@example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [support]}}
            - {{email: bob@example.com, name: Bob Builder}}
            - {{email: carol@example.com, name: Carol Chief}}
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


Make = Callable[[str], tuple[TestClient, TicketStore]]


@pytest.fixture
def make(db_url: str, tmp_path: Path) -> Iterator[Make]:
    stores: list[TicketStore] = []

    def build(mode: str = "proxy") -> tuple[TestClient, TicketStore]:
        config = parse_text(config_text(db_url, mode), str(tmp_path / "deskmail.yaml"))
        store = TicketStore(config.database_url)
        store.migrate()
        stores.append(store)
        if store.get_ticket("SUPPORT-1") is None:
            store.apply(command(1, domain="customer.test", subject="Printer on fire"))
            store.apply(command(2, domain="customer.test", subject="Bulk order", queue="SALES",
                                mailbox="sales@example.com"))
        return TestClient(create_app(config, store, None), base_url=ORIGIN, client=("127.0.0.1", 50000)), store

    yield build
    for store in stores:
        store.close()


def csrf_token(client: TestClient, page: str, headers: dict[str, str]) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(page, headers=headers).text)
    assert found
    return found.group(1)


def test_an_agent_without_access_gets_403_on_the_ticket_page_and_api(make: Make) -> None:
    client, _ = make("proxy")
    assert client.get("/tickets/SUPPORT-1", headers=ALICE).status_code == 200
    for path in ("/tickets/SALES-1", "/queues/SALES"):
        page = client.get(path, headers={**ALICE, "Accept": "text/html"})  # as a browser asks
        assert page.status_code == 403 and page.headers["content-type"].startswith("text/html"), path
        assert "alice@example.com has no access to queue SALES" in page.text
    for path in ("/api/v1/tickets/SALES-1", "/api/v1/tickets/SALES-1/deliveries", "/api/v1/tickets?queue=SALES"):
        api = client.get(path, headers=ALICE)
        assert api.status_code == 403, path
        assert api.json() == {"detail": "alice@example.com has no access to queue SALES"}
    reply = client.post("/api/v1/tickets/SALES-1/replies", headers=ALICE, json={"text": "x", "internal": True})
    assert reply.status_code == 403
    form = client.post("/tickets/SALES-1/reply", headers={**ALICE, "Origin": ORIGIN},
                       data={"text": "x", "csrf_token": csrf_token(client, "/tickets/SUPPORT-1", ALICE)})
    assert form.status_code == 403
    assert "Bulk order" not in client.get("/tickets/SALES-1", headers=ALICE).text
    assert client.get("/tickets/NOPE-9", headers=ALICE).status_code == 404  # unknown stays 404


def test_lists_show_only_the_queues_an_agent_sees(make: Make) -> None:
    client, _ = make("proxy")
    listed = client.get("/api/v1/tickets", headers=ALICE).json()
    assert [t["key"] for t in listed["tickets"]] == ["SUPPORT-1"] and listed["total"] == 1
    index = client.get("/", headers=ALICE).text
    assert "SUPPORT-1" in index and "Printer on fire" in index
    assert "SALES" not in index and "Bulk order" not in index
    bob = client.get("/api/v1/tickets", headers=BOB).json()
    assert [t["key"] for t in bob["tickets"]] == ["SALES-1"] and bob["total"] == 1


def test_an_admin_sees_everything_and_alone_uses_settings(make: Make) -> None:
    client, _ = make("proxy")
    listed = client.get("/api/v1/tickets", headers=CAROL).json()
    assert [t["key"] for t in listed["tickets"]] == ["SALES-1", "SUPPORT-1"] and listed["total"] == 2
    assert client.get("/api/v1/tickets/SALES-1", headers=CAROL).status_code == 200
    assert client.get("/tickets/SUPPORT-1", headers=CAROL).status_code == 200
    index = client.get("/", headers=CAROL).text
    assert "/queues/SALES/settings" in index and "Bulk order" in index
    assert client.get("/queues/SUPPORT/settings", headers=CAROL).status_code == 200

    refused = client.get("/queues/SUPPORT/settings", headers=ALICE)
    assert refused.status_code == 403 and "only organization.admins" in refused.text
    assert "/queues/SUPPORT/settings" not in client.get("/", headers=ALICE).text
    token = csrf_token(client, "/tickets/SUPPORT-1", ALICE)
    for action in ("check", "test"):
        post = client.post(f"/queues/SUPPORT/settings/{action}", headers={**ALICE, "Origin": ORIGIN},
                           data={"mailbox": "support@example.com", "to": "x@example.com", "csrf_token": token})
        assert post.status_code == 403, action


def test_a_token_carries_its_members_access(make: Make) -> None:
    client, store = make("proxy")
    _, token = store.create_token("bob@example.com", "script")
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/tickets/SUPPORT-1", headers=bearer).status_code == 403
    assert [t["key"] for t in client.get("/api/v1/tickets", headers=bearer).json()["tickets"]] == ["SALES-1"]
    reply = client.post("/api/v1/tickets/SALES-1/replies", headers=bearer, json={"text": "On it.", "internal": True})
    assert reply.status_code == 201, reply.text


def test_without_sign_in_everything_stays_visible_but_a_token_still_counts(make: Make) -> None:
    client, store = make("none")
    listed = client.get("/api/v1/tickets").json()
    assert listed["total"] == 2
    assert client.get("/tickets/SALES-1").status_code == 200
    assert client.get("/queues/SALES/settings").status_code == 200
    _, token = store.create_token("alice@example.com", "script")
    assert client.get("/api/v1/tickets/SALES-1", headers={"Authorization": f"Bearer {token}"}).status_code == 403
