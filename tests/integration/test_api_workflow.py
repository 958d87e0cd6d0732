"""Working a queue through the api: changes, Take, send and set status, views, live
updates, the ticket gauge and histograms, against a real store (SQLite and PostgreSQL).

Agents are named by the proxy's header from a trusted client host (loopback), or by
an API token; forms are posted as the page posts them (token, cookie, Origin).
"""

from __future__ import annotations

import logging
import re
import textwrap
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, func, select

from services.api.app import create_app
from services.common.config import parse_text
from services.tickets import TicketChange, TicketStore
from services.tickets.tables import metadata
from tests.harness.records import command

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette 1.x warns at import about the TestClient
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

ORIGIN = "http://127.0.0.1:8080"
ALICE = {"X-Forwarded-Email": "alice@example.com"}  # support group: SUPPORT
DAVE = {"X-Forwarded-Email": "dave@example.com"}  # support group: SUPPORT
BOB = {"X-Forwarded-Email": "bob@example.com"}  # SALES only
CAROL = {"X-Forwarded-Email": "carol@example.com"}  # admin


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
            - {{email: dave@example.com, name: Dave Desk, groups: [support]}}
            - {{email: bob@example.com, name: Bob Builder}}
            - {{email: carol@example.com, name: Carol Chief}}
        queues:
          - key: SUPPORT
            access: [group:support]
            allow_outbound_mail: true
            mailboxes:
              - address: support@example.com
                accept_external: true
                ingress: true
                ticket: {{type: question, components: [billing, shipping]}}
                smtp: {{host: 127.0.0.1, port: 2525, security: none, address: support@example.com}}
          - key: SALES
            access: [bob@example.com]
            mailboxes:
              - {{address: sales@example.com, ingress: true, accept_external: true}}
        """)


def mail(n: int, **overrides: Any) -> dict[str, Any]:
    return command(n, domain="customer.test", subject=f"Printer {n} <b>on fire</b>", **overrides)


def answer(n: int, to: int, **overrides: Any) -> dict[str, Any]:
    """The customer's answer (command n) to mail ``msg-<to>@customer.test``."""
    return command(n, domain="customer.test", action="comment", classification="reply",
                   in_reply_to=f"msg-{to}@customer.test", subject="Re: it", **overrides)


Make = Callable[..., tuple[TestClient, TicketStore]]


@pytest.fixture
def make(db_url: str, tmp_path: Path) -> Iterator[Make]:
    stores: list[TicketStore] = []

    def build(mode: str = "proxy", url: str | None = None) -> tuple[TestClient, TicketStore]:
        config = parse_text(config_text(url or db_url, mode), str(tmp_path / "deskmail.yaml"))
        store = TicketStore(config.database_url)
        stores.append(store)
        if url is None:
            store.migrate()
            if store.get_ticket("SUPPORT-1") is None:
                store.apply(mail(1))
                store.apply(mail(2, queue="SALES", mailbox="sales@example.com"))
        return TestClient(create_app(config, store, None), base_url=ORIGIN, client=("127.0.0.1", 50000)), store

    yield build
    for store in stores:
        store.close()


def rows(store: TicketStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in metadata.sorted_tables}


def token_of(client: TestClient, page: str, headers: dict[str, str]) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(page, headers=headers).text)
    assert found
    return found.group(1)


def post_form(client: TestClient, action: str, data: dict[str, Any], headers: dict[str, str], **options: Any) -> Any:
    """Post as the ticket page does: its token and cookie, deskmail's Origin."""
    page = "/tickets/" + action.split("/")[2]
    token = token_of(client, page, headers)
    return client.post(action, data={**data, "csrf_token": token}, headers={**headers, "Origin": ORIGIN}, **options)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------------ PATCH


def test_patch_changes_each_field_with_an_event_and_a_new_version(make: Make) -> None:
    client, store = make()
    t = client.get("/api/v1/tickets/SUPPORT-1", headers=ALICE).json()
    assert (t["status"], t["assignee"], t["version"], t["events"]) == ("open", None, 1, [])
    assert t["awaiting_reply"] is True and t["follow_up_of"] is None and t["follow_ups"] == []
    assert t["first_response_at"] is None and t["resolved_at"] is None
    steps = [({"status": "in_progress"}, "status", "open", "in_progress"),
             ({"assignee": "dave@example.com"}, "assignee", "", "dave@example.com"),
             ({"assignee": "me"}, "assignee", "dave@example.com", "alice@example.com"),
             ({"type": "incident"}, "type", "question", "incident"),
             ({"components": ["shipping"]}, "components", "billing, web", "shipping"),
             ({"assignee": ""}, "assignee", "alice@example.com", "")]
    for version, (body, kind, old, new) in enumerate(steps, start=1):
        done = client.patch("/api/v1/tickets/SUPPORT-1", headers=ALICE, json={**body, "version": version})
        assert done.status_code == 200, done.text
        out = done.json()
        assert out["version"] == version + 1
        (ev,) = out["events"]
        assert (ev["kind"], ev["actor"], ev["old_value"], ev["new_value"]) == (kind, "alice@example.com", old, new)
    t = client.get("/api/v1/tickets/SUPPORT-1", headers=ALICE).json()
    assert (t["status"], t["assignee"], t["type"], t["components"], t["version"]) == (
        "in_progress", None, "incident", ["shipping"], 7)
    assert [e["kind"] for e in t["events"]] == ["status", "assignee", "assignee", "type", "components", "assignee"]
    # the same values again: no event, the version stays
    same = client.patch("/api/v1/tickets/SUPPORT-1", headers=ALICE, json={"status": "in_progress", "version": 7})
    assert same.status_code == 200 and same.json()["events"] == [] and same.json()["version"] == 7
    listed = client.get("/api/v1/tickets", headers=ALICE, params={"queue": "SUPPORT"}).json()["tickets"][0]
    assert (listed["assignee"], listed["version"], listed["status"]) == (None, 7, "in_progress")


def test_a_stale_version_is_409_with_the_newest_events_and_changes_nothing(make: Make) -> None:
    client, store = make()
    assert client.patch("/api/v1/tickets/SUPPORT-1", headers=DAVE,
                        json={"status": "waiting", "assignee": "me", "version": 1}).status_code == 200
    before = (store.get_ticket("SUPPORT-1"), rows(store))
    stale = client.patch("/api/v1/tickets/SUPPORT-1", headers=ALICE, json={"status": "resolved", "version": 1})
    assert stale.status_code == 409
    body = stale.json()
    assert body["version"] == 2 and "changed by someone else" in body["detail"]
    assert [(e["kind"], e["actor"], e["new_value"]) for e in body["events"]] == [
        ("status", "dave@example.com", "waiting"), ("assignee", "dave@example.com", "dave@example.com")]
    assert (store.get_ticket("SUPPORT-1"), rows(store)) == before


def test_bad_values_are_422_and_other_queues_403(make: Make) -> None:
    client, store = make()
    before = rows(store)
    cases = [
        ({"status": "done", "version": 1}, None),
        ({"status": "open"}, None),  # no version
        ({"assignee": "bob@example.com", "version": 1}, "bob@example.com has no access to queue SUPPORT"),
        ({"assignee": "eve@customer.test", "version": 1}, "not an organization member"),
        ({"type": "", "version": 1}, "type"),
        ({"bogus": 1, "version": 1}, None),
        ({"status": "open", "version": 1, "actor": "dave@example.com"}, "cannot change as dave@example.com"),
    ]
    for body, detail in cases:
        response = client.patch("/api/v1/tickets/SUPPORT-1", headers=ALICE, json=body)
        expected = 403 if "actor" in body else 422
        assert response.status_code == expected, (body, response.text)
        if detail:
            assert detail in response.json()["detail"], response.json()
    # an admin may be assigned anywhere; bob may not touch SUPPORT, alice not SALES
    assert client.patch("/api/v1/tickets/SUPPORT-1", headers=ALICE,
                        json={"assignee": "carol@example.com", "version": 1}).status_code == 200
    refused = client.patch("/api/v1/tickets/SALES-1", headers=ALICE, json={"status": "waiting", "version": 1})
    assert refused.status_code == 403 and refused.json() == {"detail": "alice@example.com has no access to queue SALES"}
    assert client.patch("/api/v1/tickets/SUPPORT-9", headers=ALICE, json={"version": 1}).status_code == 404
    assert rows(store)["ticket_events"] == before["ticket_events"] + 1


@pytest.mark.parametrize("mode", ["proxy", "none"])
def test_patch_with_a_bearer_token_in_every_mode(make: Make, mode: str) -> None:
    client, store = make(mode)
    _, token = store.create_token("bob@example.com", "script")
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.patch("/api/v1/tickets/SUPPORT-1", headers=bearer, json={"version": 1}).status_code == 403
    done = client.patch("/api/v1/tickets/SALES-1", headers=bearer, json={"assignee": "me", "version": 1})
    assert done.status_code == 200 and done.json()["assignee"] == "bob@example.com"
    if mode == "none":  # without any identity the change names its actor
        assert client.patch("/api/v1/tickets/SUPPORT-1", json={"status": "waiting", "version": 1}).status_code == 403
        named = client.patch("/api/v1/tickets/SUPPORT-1",
                             json={"status": "waiting", "version": 1, "actor": "alice@example.com"})
        assert named.status_code == 200 and named.json()["events"][0]["actor"] == "alice@example.com"


# ------------------------------------------------------------------ the page's forms


def test_take_assigns_to_me_and_starts_an_open_ticket_only(make: Make) -> None:
    client, store = make()
    took = post_form(client, "/tickets/SUPPORT-1/take", {"version": "1"}, ALICE, follow_redirects=False)
    assert took.status_code == 303 and took.headers["location"] == "/tickets/SUPPORT-1"
    t = store.get_ticket("SUPPORT-1")
    assert t is not None and (t.assignee, t.status, t.version) == ("alice@example.com", "in_progress", 2)
    store.change_ticket("SUPPORT-1", TicketChange(status="waiting"), actor="alice@example.com", expected_version=2)
    page = client.get("/tickets/SUPPORT-1", headers=DAVE).text
    assert 'id="take"' in page and "assigned to <strong id=\"ticket-assignee\">Alice Agent</strong>" in page
    post_form(client, "/tickets/SUPPORT-1/take", {"version": "3"}, DAVE)
    t = store.get_ticket("SUPPORT-1")
    assert t is not None and (t.assignee, t.status) == ("dave@example.com", "waiting")  # waiting stays waiting
    assert 'id="take"' not in client.get("/tickets/SUPPORT-1", headers=DAVE).text  # already Dave's


def test_the_change_form_and_its_conflict_keep_what_the_agent_typed(make: Make) -> None:
    client, store = make()
    page = client.get("/tickets/SUPPORT-1", headers=ALICE).text
    assert 'name="version" id="version" value="1"' in page and 'form="reply" formaction="/tickets/SUPPORT-1/change"' in page
    assert '<option value="dave@example.com">Dave Desk</option>' in page
    assert 'value="carol@example.com">Carol Chief' in page and 'value="bob@example.com"' not in page
    assert re.search(r'name="components" value="billing" form="reply" checked', page)
    assert 'name="components" value="shipping" form="reply">' in page  # from the mailbox config
    # Dave changes the ticket first
    store.change_ticket("SUPPORT-1", TicketChange(status="waiting"), actor="dave@example.com", expected_version=1)
    draft = {"version": "1", "status": "resolved", "assignee": "alice@example.com", "type": "question",
             "components": ["shipping"], "components_shown": "1", "text": "Dear <Carol>, half-typed answer",
             "to": "carol@customer.test", "cc": "x@customer.test", "set_status": "waiting", "send_email": "on"}
    conflict = post_form(client, "/tickets/SUPPORT-1/change", draft, ALICE)
    assert conflict.status_code == 409
    body = conflict.text
    assert "SUPPORT-1 changed while you were editing, so nothing was saved or sent" in body
    assert "Dave Desk changed status open → waiting" in unescape(body)
    assert "Dear &lt;Carol&gt;, half-typed answer</textarea>" in body  # the draft, escaped
    assert 'value="x@customer.test"' in body and '<option value="waiting" selected>waiting</option>' in body
    assert re.search(r'<option value="resolved" selected>resolved</option>', body)  # their choice, not the ticket's
    assert 'name="version" id="version" value="2"' in body  # sending again applies it over Dave's change
    t = store.get_ticket("SUPPORT-1")
    assert t is not None and (t.status, t.assignee, t.version) == ("waiting", None, 2)
    # saved with the new version; the draft survives the success too
    saved = post_form(client, "/tickets/SUPPORT-1/change", {**draft, "version": "2"}, ALICE, follow_redirects=False)
    assert saved.status_code == 200 and "Dear &lt;Carol&gt;, half-typed answer</textarea>" in saved.text
    t = store.get_ticket("SUPPORT-1")
    assert t is not None and (t.status, t.assignee, t.components) == ("resolved", "alice@example.com", ("shipping",))
    refused = post_form(client, "/tickets/SUPPORT-1/change", {**draft, "version": "3", "assignee": "bob@example.com"},
                        ALICE)
    assert refused.status_code == 422 and "bob@example.com has no access to queue SUPPORT" in refused.text


def test_send_and_set_waiting_from_the_page_and_the_api(make: Make) -> None:
    client, store = make()
    first = sample("deskmail_ticket_first_response_seconds_count", queue="SUPPORT")
    resolved = sample("deskmail_ticket_resolution_seconds_count", queue="SUPPORT")
    sent = post_form(client, "/tickets/SUPPORT-1/reply", {
        "text": "Please send the serial number.", "send_email": "on", "to": "ann@customer.org",
        "set_status": "waiting", "version": "1"}, ALICE, follow_redirects=False)
    assert sent.status_code == 303, sent.text
    t = store.get_ticket("SUPPORT-1")
    assert t is not None and (t.status, t.version, len(t.thread), t.awaiting_reply) == ("waiting", 2, 1, False)
    assert (t.events[-1].actor, t.events[-1].new_value) == ("alice@example.com", "waiting")
    assert sample("deskmail_ticket_first_response_seconds_count", queue="SUPPORT") == first + 1

    stale = client.post("/api/v1/tickets/SUPPORT-1/replies", headers=DAVE,
                        json={"text": "Solved?", "set_status": "resolved", "version": 1})
    assert stale.status_code == 409 and stale.json()["version"] == 2
    assert [e["new_value"] for e in stale.json()["events"]] == ["waiting"]
    assert len(store.get_ticket("SUPPORT-1").thread) == 1 and len(store.pending_outbox()) == 1  # type: ignore[union-attr]
    done = client.post("/api/v1/tickets/SUPPORT-1/replies", headers=DAVE,
                       json={"text": "Solved.", "set_status": "resolved", "version": 2})
    assert done.status_code == 201, done.text
    out = done.json()
    assert out["ticket_version"] == 3 and [e["new_value"] for e in out["events"]] == ["resolved"]
    assert sample("deskmail_ticket_resolution_seconds_count", queue="SUPPORT") == resolved + 1
    assert sample("deskmail_ticket_first_response_seconds_count", queue="SUPPORT") == first + 1  # not the first
    assert client.post("/api/v1/tickets/SUPPORT-1/replies", headers=DAVE,
                       json={"text": "x", "set_status": "later"}).status_code == 422
    kept = client.post("/api/v1/tickets/SUPPORT-1/replies", headers=DAVE, json={"text": "note", "internal": True})
    assert kept.status_code == 201 and kept.json()["ticket_version"] is None and kept.json()["events"] == []
    # a page reply with a stale version: 409, the draft kept, nothing stored
    before = rows(store)
    page = post_form(client, "/tickets/SUPPORT-1/reply", {"text": "my long draft", "set_status": "waiting",
                                                           "version": "1", "send_email": "on", "to": "ann@customer.org"}, ALICE)
    assert page.status_code == 409 and "my long draft</textarea>" in page.text and rows(store) == before


def test_events_are_shown_in_the_thread_and_in_json(make: Make) -> None:
    client, store = make()
    store.change_ticket("SUPPORT-1", TicketChange(status="waiting"), actor="alice@example.com", expected_version=1)
    store.apply(answer(3, 1, text="Still <broken>", received_at=datetime.now(timezone.utc)))  # reopens it
    store.change_ticket("SUPPORT-1", TicketChange(status="closed"), actor="dave@example.com", expected_version=3)
    store.apply(answer(4, 1, text="Again!"))  # a follow-up ticket
    page = client.get("/tickets/SUPPORT-1", headers=ALICE).text
    text = unescape(re.sub(r"<[^>]+>", " ", page))
    text = re.sub(r"\s+", " ", text)
    assert "Alice Agent changed status open → waiting" in text
    assert "deskmail: reopened by customer reply (status waiting → open)" in text
    assert "Dave Desk changed status open → closed" in text
    assert "deskmail: follow-up SUPPORT-2 opened" in text and '<a href="/tickets/SUPPORT-2">SUPPORT-2</a>' in page
    assert "Still &lt;broken&gt;" in page
    # interleaved by time: the answer comes between the status change and its reopening
    order = [page.index(s) for s in ("open → waiting", "Still &lt;broken&gt;", "reopened by customer reply")]
    assert order == sorted(order)
    follow = client.get("/tickets/SUPPORT-2", headers=ALICE).text
    assert 'Follow-up of</dt><dd><a href="/tickets/SUPPORT-1">SUPPORT-1</a>' in follow
    data = client.get("/api/v1/tickets/SUPPORT-1", headers=ALICE).json()
    assert [(e["kind"], e["actor"], e["new_value"]) for e in data["events"]] == [
        ("status", "alice@example.com", "waiting"), ("status", None, "open"), ("status", "dave@example.com", "closed"),
        ("follow_up", None, "SUPPORT-2")]
    assert data["events"][1]["reason"] == "reopened by customer reply" and data["follow_ups"] == ["SUPPORT-2"]
    assert client.get("/api/v1/tickets/SUPPORT-2", headers=ALICE).json()["follow_up_of"] == "SUPPORT-1"


def test_new_forms_refuse_posts_without_the_token_or_from_another_site(make: Make) -> None:
    client, store = make()
    before = rows(store)
    token = token_of(client, "/tickets/SUPPORT-1", ALICE)
    for action in ("change", "take", "reply"):
        path = f"/tickets/SUPPORT-1/{action}"
        data = {"version": "1", "status": "resolved", "text": "x", "set_status": "resolved"}
        no_token = client.post(path, data=data, headers={**ALICE, "Origin": ORIGIN})
        assert no_token.status_code == 403 and "CSRF" in no_token.text, action
        other_site = client.post(path, data={**data, "csrf_token": token},
                                 headers={**ALICE, "Origin": "https://evil.test"})
        assert other_site.status_code == 403 and "another site" in other_site.text, action
        no_origin = client.post(path, data={**data, "csrf_token": token}, headers=ALICE)
        assert no_origin.status_code == 403, action
    foreign_json = client.patch("/api/v1/tickets/SUPPORT-1", headers={**ALICE, "Origin": "https://evil.test"},
                                json={"status": "resolved", "version": 1})
    assert foreign_json.status_code == 403
    bob = post_form(client, "/tickets/SALES-1/take", {"version": "1"}, BOB)
    assert bob.status_code == 200  # Bob's own queue
    alice = client.post("/tickets/SALES-1/take", data={"version": "2", "csrf_token": token},
                        headers={**ALICE, "Origin": ORIGIN})
    assert alice.status_code == 403 and "no access to queue SALES" in alice.text
    assert rows(store)["ticket_events"] == before["ticket_events"] + 2  # Bob's take: assignee and status


# ------------------------------------------------------------------ views


def _queue_of_seven(store: TicketStore) -> None:
    """SUPPORT-1..7 (SALES-1 aside): 2 and 4 Alice's, 3 Dave's, 5 waiting, 6 a task on shipping."""
    for n in range(3, 9):
        store.apply(mail(n))
    me, dave = "alice@example.com", "dave@example.com"
    store.change_ticket("SUPPORT-2", TicketChange(assignee=me, status="in_progress"), actor=me, expected_version=1)
    store.change_ticket("SUPPORT-4", TicketChange(assignee=me), actor=me, expected_version=1)
    store.change_ticket("SUPPORT-3", TicketChange(assignee=dave), actor=dave, expected_version=1)
    store.change_ticket("SUPPORT-5", TicketChange(status="waiting"), actor=dave, expected_version=1)
    store.change_ticket("SUPPORT-6", TicketChange(type="task", components=("shipping",)), actor=dave,
                        expected_version=1)


def keys(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [t["key"] for t in response.json()["tickets"]]


def test_the_list_api_filters_pages_by_cursor_and_counts(make: Make) -> None:
    client, store = make()
    _queue_of_seven(store)
    get = lambda **params: client.get("/api/v1/tickets", headers=ALICE, params=params)  # noqa: E731
    # as before: newest created first, total/limit/offset, offset paging
    plain = get(limit=3).json()
    assert [t["key"] for t in plain["tickets"]] == ["SUPPORT-7", "SUPPORT-6", "SUPPORT-5"]
    assert (plain["total"], plain["limit"], plain["offset"], plain["count"]) == (7, 3, 0, {"n": 7, "exact": True})
    assert keys(get(limit=2, offset=5)) == ["SUPPORT-2", "SUPPORT-1"]
    # keyset pages: every ticket once
    seen, cursor = [], None
    while True:
        page = get(limit=3, **({"cursor": cursor} if cursor else {})).json()
        seen += [t["key"] for t in page["tickets"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"SUPPORT-{n}" for n in range(7, 0, -1)]
    assert keys(get(assignee="me")) == ["SUPPORT-4", "SUPPORT-2"]
    assert get(assignee="me").json()["count"] == {"n": 2, "exact": True}
    assert keys(get(assignee="dave@example.com")) == ["SUPPORT-3"]
    assert keys(get(assignee="none", status="open")) == ["SUPPORT-7", "SUPPORT-6", "SUPPORT-1"]
    assert keys(get(assignee="")) == keys(get(assignee="none"))
    assert keys(get(status="waiting,in_progress")) == ["SUPPORT-5", "SUPPORT-2"]
    assert keys(get(type="task")) == keys(get(component="shipping")) == ["SUPPORT-6"]
    assert get(type="task").json()["count"] == {"n": 1, "exact": True}
    # sorted by the last update, oldest first: the ones changed last come last
    assert keys(get(sort="updated", order="asc")) == list(reversed(keys(get(sort="updated"))))
    by_update = keys(get(sort="updated", order="desc", limit=5))
    assert by_update == ["SUPPORT-6", "SUPPORT-5", "SUPPORT-3", "SUPPORT-4", "SUPPORT-2"]
    store.apply(answer(20, 3))  # the customer answered on SUPPORT-3 (answered by nobody since)
    awaiting = keys(get(awaiting_reply="true"))
    assert "SUPPORT-3" in awaiting
    client.post("/api/v1/tickets/SUPPORT-3/replies", headers=ALICE, json={"text": "On it.", "to": ["ann@customer.org"]})
    assert "SUPPORT-3" not in keys(get(awaiting_reply="true"))
    full = client.get("/api/v1/tickets", headers=ALICE, params={"limit": 500}).json()
    assert len(full["tickets"]) == 7 and {"assignee", "version", "awaiting_reply"} <= set(full["tickets"][0])
    # refusals
    assert get(cursor="not-a-cursor").status_code == 400
    other_sort = get(limit=1).json()["next_cursor"]
    assert get(cursor=other_sort, sort="updated").status_code == 400
    assert get(status="done").status_code == 422 and "status must be among" in get(status="done").json()["detail"]
    assert get(assignee="not an address").status_code == 422
    assert get(sort="random").status_code == 422
    assert get(offset=1, status="open").status_code == 422
    assert client.get("/api/v1/tickets", headers=ALICE, params={"queue": "SALES"}).status_code == 403
    carol = client.get("/api/v1/tickets", headers=CAROL, params={"assignee": "me"}).json()
    assert carol["tickets"] == [] and carol["count"] == {"n": 0, "exact": True}


def test_assignee_me_needs_an_identity(make: Make) -> None:
    client, _ = make("none")
    refused = client.get("/api/v1/tickets", params={"assignee": "me"})
    assert refused.status_code == 422 and "signed-in agent" in refused.json()["detail"]
    assert client.get("/api/v1/tickets").json()["total"] == 2


def test_queue_and_home_pages_filter_count_and_page(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.api import views_web

    client, store = make()
    _queue_of_seven(store)
    monkeypatch.setattr(views_web, "PAGE_SIZE", 3)
    page = client.get("/queues/SUPPORT?sort=created", headers=ALICE)
    assert page.status_code == 200
    body = page.text
    assert '<p class="muted" id="view-count">7 tickets</p>' in body
    assert re.search(r'data-status="waiting">waiting <span class="count">1</span>', body)
    assert re.search(r'data-status="any">any <span class="count">7</span>', body)
    assert body.count('<tr data-key=') == 3 and "Printer 7 &lt;b&gt;on fire&lt;/b&gt;" in body
    nxt = re.search(r'href="([^"]+)" id="next-page"', body)
    assert nxt
    second = client.get(unescape(nxt.group(1)), headers=ALICE).text
    assert re.findall(r'<tr data-key="([^"]+)"', second) == ["SUPPORT-4", "SUPPORT-3", "SUPPORT-2"]
    assert 'id="first-page"' in second
    mine = client.get("/queues/SUPPORT?assignee=me&status=in_progress", headers=ALICE).text
    assert re.findall(r'<tr data-key="([^"]+)"', mine) == ["SUPPORT-2"]
    assert '<option value="me" selected>me</option>' in mine and 'id="view-count">1 ticket</p>' in mine
    # the tabs count with the other filters: Alice's tickets per status
    assert re.search(r'data-status="open">open <span class="count">1</span>', mine)
    assert '<option value="shipping">shipping</option>' in mine  # components from the mailbox config
    assert client.get("/queues/SUPPORT?cursor=garbage", headers=ALICE).status_code == 400
    bad = client.get("/queues/SUPPORT?status=nope", headers={**ALICE, "Accept": "text/html"})
    assert bad.status_code == 400 and "status must be among" in bad.text
    assert client.get("/queues/SALES", headers=ALICE).status_code == 403
    assert client.get("/queues/NOPE", headers=ALICE).status_code == 404

    home = client.get("/", headers=ALICE).text
    row = re.search(r'<tr data-queue="SUPPORT">(.*?)</tr>', home, re.S)
    assert row
    counts = dict(re.findall(r'data-status="(\w+)"><a href="[^"]+">(\d+)</a>', row.group(1)))
    assert counts == {"open": "5", "in_progress": "1", "waiting": "1", "resolved": "0", "closed": "0"}
    assert "SALES" not in home
    assert re.findall(r'<tr data-key="([^"]+)"', client.get("/?assignee=me", headers=ALICE).text) == [
        "SUPPORT-4", "SUPPORT-2"]


COUNTING_TICKETS = re.compile(r"count\([^)]*\)\s+AS\s+\w+\s+FROM\s+tickets\b(?!_)", re.I)


def test_the_home_page_and_the_scrape_read_the_kept_counts_not_the_tickets(make: Make) -> None:
    client, store = make()
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: statements.append(statement))
    client.get("/metrics")
    scrape = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    # the ticket gauge reads the kept counts; the suspended gauge groups the rejections (never tickets)
    assert scrape and all("ticket_counts" in s or "FROM rejections" in s for s in scrape), scrape
    assert any("ticket_counts" in s for s in scrape) and not any(COUNTING_TICKETS.search(s) for s in scrape)
    statements.clear()
    client.get("/", headers=ALICE)
    assert any("ticket_counts" in s for s in statements)
    assert not any(COUNTING_TICKETS.search(s) for s in statements), statements
    # the pattern does catch a count of the tickets table (as the home page once made)
    assert COUNTING_TICKETS.search("SELECT tickets.queue, count(*) AS count_1 \nFROM tickets GROUP BY tickets.queue")


# ------------------------------------------------------------------ live


def test_the_live_endpoint_answers_304_until_the_ticket_changes(make: Make) -> None:
    client, store = make()
    page = client.get("/tickets/SUPPORT-1", headers=ALICE).text
    etag = unescape(re.search(r'data-etag="([^"]+)"', page).group(1))  # type: ignore[union-attr]
    assert 'data-live="/tickets/SUPPORT-1/live"' in page and '<script src="/static/live.js" defer></script>' in page
    same = client.get("/tickets/SUPPORT-1/live", headers={**ALICE, "If-None-Match": etag})
    assert same.status_code == 304 and same.headers["etag"] == etag and same.content == b""
    store.change_ticket("SUPPORT-1", TicketChange(status="waiting"), actor="dave@example.com", expected_version=1)
    changed = client.get("/tickets/SUPPORT-1/live", headers={**ALICE, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    data = changed.json()
    assert data["etag"] == changed.headers["etag"] and (data["version"], data["status"]) == (2, "waiting")
    assert set(data["fragments"]) == {"ticket-head", "details", "thread-entries", "change-fields"}
    assert 'data-status="waiting"' in data["fragments"]["ticket-head"]
    assert "Dave Desk" in data["fragments"]["thread-entries"] and "open → waiting" in data["fragments"]["thread-entries"]
    assert "textarea" not in "".join(data["fragments"].values())  # the reply form is never sent
    assert "Printer 1 &lt;b&gt;" not in data["fragments"]["details"]
    again = client.get("/tickets/SUPPORT-1/live", headers={**ALICE, "If-None-Match": data["etag"]})
    assert again.status_code == 304
    # a customer's answer and a delivery update each change the tag
    store.apply(answer(30, 1, text="News"))
    news = client.get("/tickets/SUPPORT-1/live", headers={**ALICE, "If-None-Match": data["etag"]})
    assert news.status_code == 200 and "News" in news.json()["fragments"]["thread-entries"]
    reply = client.post("/api/v1/tickets/SUPPORT-1/replies", headers=ALICE, json={"text": "Ok", "to": ["a@customer.test"]})
    tag = client.get("/tickets/SUPPORT-1/live", headers=ALICE).headers["etag"]
    store.record_delivery({"outbound_id": reply.json()["delivery"]["outbound_id"], "status": "sent",
                           "smtp_code": 250, "smtp_reply": "2.0.0 Ok", "time": datetime.now(timezone.utc)})
    sent = client.get("/tickets/SUPPORT-1/live", headers={**ALICE, "If-None-Match": tag})
    assert sent.status_code == 200 and 'data-status="sent"' in sent.json()["fragments"]["thread-entries"]
    assert client.get("/tickets/SALES-1/live", headers=ALICE).status_code == 403
    html_view = client.get("/tickets/SUPPORT-1?html=1", headers=ALICE).text
    assert 'data-live="/tickets/SUPPORT-1/live?html=1"' in html_view


def test_the_queue_views_live_list(make: Make) -> None:
    client, store = make()
    page = client.get("/queues/SUPPORT?status=open", headers=ALICE).text
    live_url = unescape(re.search(r'data-live="([^"]+)"', page).group(1))  # type: ignore[union-attr]
    etag = unescape(re.search(r'data-etag="([^"]+)"', page).group(1))  # type: ignore[union-attr]
    assert live_url == "/queues/SUPPORT/live?status=open"
    assert client.get(live_url, headers={**ALICE, "If-None-Match": etag}).status_code == 304
    store.apply(mail(40))
    fresh = client.get(live_url, headers={**ALICE, "If-None-Match": etag})
    assert fresh.status_code == 200 and "SUPPORT-2" in fresh.json()["fragments"]["view-list"]
    assert 'id="filters"' not in fresh.json()["fragments"]["view-list"]  # the filter form stays as it is
    home = client.get("/", headers=ALICE).text
    home_etag = unescape(re.search(r'data-etag="([^"]+)"', home).group(1))  # type: ignore[union-attr]
    assert client.get("/home/live", headers={**ALICE, "If-None-Match": home_etag}).status_code == 304
    assert client.get("/queues/SALES/live", headers=ALICE).status_code == 403


# ------------------------------------------------------------------ metrics and the document


def gauge(client: TestClient, queue: str, status: str) -> float | None:
    found = re.search(rf'^deskmail_tickets\{{queue="{queue}",status="{status}"\}} (\S+)$',
                      client.get("/metrics").text, re.M)
    return float(found.group(1)) if found else None


def test_the_ticket_gauge_is_read_from_the_kept_counts(make: Make) -> None:
    client, store = make()
    assert gauge(client, "SUPPORT", "open") == 1 and gauge(client, "SUPPORT", "waiting") == 0
    assert gauge(client, "SALES", "open") == 1
    store.change_ticket("SUPPORT-1", TicketChange(status="waiting"), actor="alice@example.com", expected_version=1)
    assert gauge(client, "SUPPORT", "open") == 0 and gauge(client, "SUPPORT", "waiting") == 1
    assert "# TYPE deskmail_tickets gauge" in client.get("/metrics").text


def test_without_the_database_the_scrape_goes_on_without_the_gauge(make: Make, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    client, _ = make(url=f"sqlite:///{tmp_path / 'missing' / 'no' / 'tickets.db'}")
    with caplog.at_level(logging.WARNING, logger="deskmail.api"):
        first = client.get("/metrics")
        second = client.get("/metrics")
    assert first.status_code == second.status_code == 200
    assert "deskmail_tickets{" not in first.text and "deskmail_ticket_first_response_seconds" in first.text
    warnings_ = [r for r in caplog.records if "ticket counts unavailable" in r.getMessage()]
    assert len(warnings_) == 1 and warnings_[0].levelno == logging.WARNING  # once a minute at most


def test_openapi_documents_the_workflow(make: Make) -> None:
    client, _ = make()
    doc = client.get("/openapi.json").json()
    patch = doc["paths"]["/api/v1/tickets/{key}"]["patch"]
    assert {"200", "403", "404", "409", "422"} <= set(patch["responses"])
    assert patch["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TicketPatch")
    assert patch["responses"]["409"]["content"]["application/json"]["schema"]["$ref"].endswith("/ConflictOut")
    schemas = doc["components"]["schemas"]
    assert "version" in schemas["TicketPatch"]["required"]
    assert {"status", "assignee", "type", "components", "version", "actor"} <= set(schemas["TicketPatch"]["properties"])
    listing = doc["paths"]["/api/v1/tickets"]["get"]
    params = {p["name"] for p in listing["parameters"]}
    assert {"queue", "status", "assignee", "type", "component", "awaiting_reply", "sort", "order", "q", "cursor",
            "limit", "offset"} <= params
    assert all(p.get("description") for p in listing["parameters"] if p["name"] != "limit")
    assert {"400", "403", "422"} <= set(listing["responses"])
    assert {"tickets", "total", "limit", "offset", "next_cursor", "count"} <= set(schemas["TicketPage"]["properties"])
    assert {"assignee", "version", "awaiting_reply", "snippet", "where"} <= set(
        schemas["TicketSummaryOut"]["properties"])
    assert {"assignee", "version", "events", "follow_up_of", "follow_ups", "awaiting_reply", "first_response_at",
            "resolved_at"} <= set(schemas["TicketOut"]["properties"])
    assert {"set_status", "version"} <= set(schemas["ReplyIn"]["properties"])
    reply = doc["paths"]["/api/v1/tickets/{key}/replies"]["post"]
    assert "409" in reply["responses"] and reply["responses"]["201"]["content"]["application/json"]["schema"][
        "$ref"].endswith("/ReplyOut")
    assert not any(p.startswith(("/tickets", "/queues", "/home")) for p in doc["paths"])  # pages are not API


# -- search -------------------------------------------------------------------


def test_search_in_the_api_finds_only_the_agents_queues_with_a_marked_snippet(make: Make) -> None:
    client, store = make()
    store.apply(command(3, domain="customer.test", subject="Refund", text="The payment for order 77 failed."))
    store.apply(command(4, domain="customer.test", subject="Also payment", text="payment",
                        queue="SALES", mailbox="sales@example.com"))
    found = client.get("/api/v1/tickets", params={"q": "payment"}, headers=ALICE)
    assert found.status_code == 200, found.text
    tickets = found.json()["tickets"]
    assert [t["key"] for t in tickets] == ["SUPPORT-2"]  # SALES-2 is Bob's queue, not Alice's
    assert tickets[0]["where"] == "description"
    assert "\ue000payment\ue001" in tickets[0]["snippet"]
    assert [t["key"] for t in client.get("/api/v1/tickets", params={"q": "payment"}, headers=CAROL)
            .json()["tickets"]] != []  # the admin sees every queue
    refused = client.get("/api/v1/tickets", params={"q": "payment", "status": "open"}, headers=ALICE)
    assert refused.status_code == 422 and "only queue applies" in refused.json()["detail"]
    for hostile in ('"', "*", "NEAR(a b)", "summary:x", "a OR", "(", "-", "x" * 200):
        assert client.get("/api/v1/tickets", params={"q": hostile}, headers=ALICE).status_code == 200, hostile
    assert client.get("/api/v1/tickets", params={"q": "x" * 5000}, headers=ALICE).status_code == 422  # too long


def test_search_on_the_page_marks_the_word_and_escapes_the_mail(make: Make) -> None:
    client, store = make()
    store.apply(command(3, domain="customer.test", subject="Broken",
                        text="The <script>alert(1)</script> flibbertigibbet broke."))
    page = client.get("/queues/SUPPORT", params={"q": "flibbertigibbet"}, headers=ALICE)
    assert page.status_code == 200
    assert "<mark>flibbertigibbet</mark>" in page.text
    assert "<script>alert(1)" not in page.text and "alert(1)&lt;/script&gt;" in page.text
    assert 'data-key="SUPPORT-2"' in page.text
