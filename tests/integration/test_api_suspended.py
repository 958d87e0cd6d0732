"""The Suspended tab and the JSON API of suspended mail, against a real store
(SQLite and PostgreSQL): agents see their queues' suspended mail, admins open
the original (a plain-text download, never a page) and release it, through a
real broker, exactly once."""

from __future__ import annotations

import json
import re
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from services.api.app import create_app
from services.common.blobs import FolderBlobStore
from services.common.bus import Record
from services.common.codec import codec
from services.common.config import Config, parse_text
from services.common.kafka import Kafka
from services.deadletters import read_one
from services.router.runner import RouterStep
from services.suspended import Releaser
from services.tickets import TicketStore
from tests.harness.records import command

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette 1.x warns at import about the TestClient
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

ORIGIN = "http://127.0.0.1:8080"
ALICE = {"X-Forwarded-Email": "alice@example.com"}  # support group: SUPPORT only
CAROL = {"X-Forwarded-Email": "carol@example.com"}  # an admin
RAW = (b"From: Mallory <mallory@stranger.test>\r\nTo: support@example.com\r\nSubject: <script>x</script> hi\r\n"
       b"Message-ID: <m1@stranger.test>\r\n\r\n<html><script>alert(1)</script></html>\r\n")


def config_text(db_url: str, data: Path, topics: dict[str, str] | None = None) -> str:
    kafka = f"kafka: {{topics: {json.dumps(topics)}, consumer: {{session_timeout_ms: 2000}}}}\n" if topics else ""
    return kafka + textwrap.dedent(f"""\
        database: {{url: "{db_url}"}}
        data_dir: {data}
        api: {{user_header: X-Forwarded-Email, auth: {{mode: proxy}}, listen: 127.0.0.1:8080}}
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
              - {{address: support@example.com, ingress: true}}
          - key: SALES
            access: [bob@example.com]
            mailboxes:
              - {{address: sales@example.com, ingress: true}}
        """)


Make = Callable[..., tuple[TestClient, TicketStore, Config]]


@pytest.fixture
def make(db_url: str, tmp_path: Path) -> Iterator[Make]:
    stores: list[TicketStore] = []

    def build(topics: dict[str, str] | None = None, releaser: Callable[[Config, TicketStore], Any] | None = None
              ) -> tuple[TestClient, TicketStore, Config]:
        config = parse_text(config_text(db_url, tmp_path / "data", topics), str(tmp_path / "deskmail.yaml"))
        store = TicketStore(config.database_url)
        store.migrate()
        stores.append(store)
        ref = FolderBlobStore(config.blob_path).put(RAW)
        store.apply(command(1, action="reject", subject="<script>x</script> hi", message_id="m1@stranger.test",
                            author={"email": "mallory@stranger.test", "name": "Mallory", "member": False},
                            reason="external_not_accepted: mallory@stranger.test is not a member", raw_ref=ref,
                            id="smtp:support@example.com:" + "a" * 64))
        store.apply(command(2, action="reject", queue="SALES", mailbox="sales@example.com", reason="loop: own"))
        app = create_app(config, store, None, releaser=releaser(config, store) if releaser else None)
        return TestClient(app, base_url=ORIGIN, client=("127.0.0.1", 50000)), store, config

    yield build
    for store in stores:
        store.close()


def post_button(client: TestClient, page: str, action: str, headers: dict[str, str],
                page_as: dict[str, str] | None = None) -> Any:
    """Press a form's button as a browser does: the page's CSRF token and cookie, deskmail's Origin
    (the token is the browser's, whoever is signed in: ``page_as`` shows the page with the form)."""
    shown = client.get(page, headers=page_as or headers)
    token = re.search(r'name="csrf_token" value="([^"]+)"', shown.text)
    assert token, shown.text
    return client.post(action, data={"csrf_token": token.group(1)}, headers={"Origin": ORIGIN, **headers},
                       follow_redirects=False)


def test_agents_see_their_queues_suspended_mail_and_only_admins_open_or_release_it(make: Make) -> None:
    client, store, _ = make()
    [sales, support] = sorted(store.list_suspended().items, key=lambda i: i.queue or "")
    page = client.get("/queues/SUPPORT/suspended", headers=ALICE)
    assert page.status_code == 200
    row = re.search(rf'<tr data-id="{support.id}".*?</tr>', page.text, re.S)
    assert row and "mallory@stranger.test" in row.group(0) and "external not accepted" in row.group(0)
    assert "&lt;script&gt;x&lt;/script&gt; hi" in row.group(0) and "<script>" not in page.text
    assert "Release" not in page.text and "/original" not in page.text  # an agent, not an admin
    assert "dead letters: see `deskmail suspended list`" in page.text
    assert re.search(r'id="suspended-link">suspended mail <span class="count">1</span>',
                     client.get("/queues/SUPPORT", headers=ALICE).text)
    assert client.get("/queues/SALES/suspended", headers=ALICE).status_code == 403
    assert client.get(f"/queues/SUPPORT/suspended/{support.id}/original", headers=ALICE).status_code == 403
    assert post_button(client, "/queues/SUPPORT/suspended", f"/queues/SUPPORT/suspended/{support.id}/release",
                       ALICE, page_as=CAROL).status_code == 403

    admin = client.get("/queues/SUPPORT/suspended", headers=CAROL).text
    assert f'action="/queues/SUPPORT/suspended/{support.id}/release"' in admin
    original = client.get(f"/queues/SUPPORT/suspended/{support.id}/original", headers=CAROL)
    assert original.status_code == 200 and original.content == RAW
    assert original.headers["content-type"] == "text/plain; charset=utf-8"
    assert original.headers["content-disposition"].startswith("attachment;")
    assert original.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in original.headers["content-security-policy"]
    # A rejection of another queue is not reached through this one; one without its original has no link.
    assert client.get(f"/queues/SUPPORT/suspended/{sales.id}/original", headers=CAROL).status_code == 404
    assert client.get(f"/queues/SALES/suspended/{sales.id}/original", headers=CAROL).status_code == 404

    listed = client.get("/api/v1/suspended", headers=ALICE).json()
    assert [i["id"] for i in listed["items"]] == [str(support.id)]
    assert listed["items"][0] | {"time": None} == {
        "id": str(support.id), "time": None, "queue": "SUPPORT", "mailbox": "support@example.com",
        "sender": "mallory@stranger.test", "subject": "<script>x</script> hi",
        "reason": "external_not_accepted: mallory@stranger.test is not a member",
        "reason_code": "external_not_accepted", "released_ticket": None, "released_by": None,
        "released_at": None, "original": True}
    assert client.get("/api/v1/suspended?queue=SALES", headers=ALICE).status_code == 403
    every = client.get("/api/v1/suspended", headers=CAROL).json()["items"]
    assert {i["queue"] for i in every} == {"SUPPORT", "SALES"}
    assert [i["id"] for i in client.get("/api/v1/suspended?reason=loop", headers=CAROL).json()["items"]] == [
        str(sales.id)]

    assert client.post(f"/api/v1/suspended/{support.id}/release", json={}, headers=ALICE).status_code == 403
    no_broker = client.post(f"/api/v1/suspended/{support.id}/release", json={}, headers=CAROL)
    assert no_broker.status_code == 503 and "cannot be released here" in no_broker.json()["detail"]
    assert client.post("/api/v1/suspended/999999/release", json={}, headers=CAROL).status_code == 404
    letter = client.post("/api/v1/suspended/dl:deskmail.deadletter:0:1/release", json={}, headers=CAROL)
    assert letter.status_code == 404 and "deskmail suspended release" in letter.json()["detail"]
    assert "/api/v1/suspended/{item_id}/release" in client.get("/openapi.json").json()["paths"]

    metrics = client.get("/metrics").text
    assert 'deskmail_suspended{queue="SUPPORT",reason="external_not_accepted"} 1.0' in metrics
    assert 'deskmail_suspended{queue="SALES",reason="loop"} 1.0' in metrics
    assert 'deskmail_suspended{queue="SUPPORT",reason="bounce"} 0.0' in metrics


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_admin_releases_suspended_mail_once_through_the_broker(make: Make, broker: Any, unique: Any) -> None:
    topics = {k: unique(f"sus-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    producers: list[Any] = []

    def releaser(config: Config, store: TicketStore) -> Releaser:
        kafka = Kafka(config, [broker.bootstrap])
        kafka.create_topics(partitions=1)
        producers.append(kafka.producer())
        return Releaser(config, store, FolderBlobStore(config.blob_path), producers[0],
                        lambda p, o: read_one(kafka, p, o), stage="api")

    client, store, config = make(topics, releaser)
    try:
        item = next(i for i in store.list_suspended().items if i.queue == "SUPPORT")
        pressed = post_button(client, "/queues/SUPPORT/suspended", f"/queues/SUPPORT/suspended/{item.id}/release",
                              CAROL)
        assert pressed.status_code == 303 and pressed.headers["location"].endswith(f"?released={item.id}")
        assert "was released" in client.get(pressed.headers["location"], headers=CAROL).text

        # The broker had it before the page answered: the original, keyed by mailbox, naming the rejection.
        consumer = KafkaConsumer(topics["inbound"], bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                 enable_auto_commit=False, consumer_timeout_ms=3000)
        [record] = list(consumer)
        consumer.close()
        inbound = codec("InboundMail").decode(record.value)
        assert record.key == b"support@example.com"
        assert (inbound["release_of"], inbound["released_by"], inbound["raw"]) == (item.command_id,
                                                                                  "carol@example.com", RAW)
        assert (inbound["source"], inbound["uid"]) == ("smtp", 0)

        # The router and the ticketer, as their processes would: one ticket, the rejection marked.
        [out] = RouterStep(config, FolderBlobStore(config.blob_path)).process(
            Record(topics["inbound"], 0, record.offset, record.key, record.value))
        routed = codec("TicketCommand").decode(out.value)
        assert (routed["action"], routed["reason"]) == ("create", "released by carol@example.com")
        assert store.apply(routed).ticket_key == "SUPPORT-1"
        assert store.apply(routed).outcome == "duplicate"

        again = client.post(f"/api/v1/suspended/{item.id}/release", json={}, headers=CAROL)
        assert again.status_code == 409 and "released already" in again.json()["detail"]
        page = client.get("/queues/SUPPORT/suspended", headers=CAROL).text
        assert re.search(r'released as <a href="/tickets/SUPPORT-1">SUPPORT-1</a> by carol@example.com', page)
        assert f"/suspended/{item.id}/release" not in page
        assert store.count_tickets() == 1
    finally:
        for producer in producers:
            producer.close()
