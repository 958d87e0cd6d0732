"""The api's pages and JSON API against a real store (SQLite and PostgreSQL), through HTTP."""

from __future__ import annotations

import re
import textwrap
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from services.api.app import create_app
from services.common import build
from services.common.codec import codec
from services.common.compose import as_bytes, compose
from services.common.config import Config, parse_text
from services.tickets import TicketStore
from services.tickets.tables import metadata
from tests.harness.records import command

with warnings.catch_warnings():
    # Starlette 1.x warns at import that its TestClient should move off httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

ORIGIN = "http://127.0.0.1:8080"  # api.listen below: a Host the api accepts
IMAP_SECRET = "imap-pw-Zq81-never-shown"
SMTP_SECRET = "smtp-pw-Xy77-never-shown"


def config_text(db_url: str, secret_file: Path, *, allow_outbound: bool = True, user_header: str | None = None,
                mailbox_extra: str = "", public_url: str | None = None, blobs: str = "") -> str:
    header = f"\n          user_header: {user_header}\n          auth: {{mode: proxy}}" if user_header else ""
    header += f"\n          public_url: {public_url}" if public_url else ""
    return blobs + textwrap.dedent(f"""\
        database: {{url: "{db_url}"}}
        api:
          listen: 127.0.0.1:8080{header}
        organization:
          domains: [example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [support]}}
            - {{email: bob@example.com, name: Bob Builder}}
        queues:
          - key: SUPPORT
            name: Customer support
            access: [group:support]
            allow_outbound_mail: {str(allow_outbound).lower()}
            mailboxes:
              - address: support@example.com
                accept_external: true
                ticket: {{type: question, components: [billing]}}
                imap: {{host: imap.example.com, port: 993, security: ssl, password: {{env: API_IMAP_PW}}}}
                smtp: {{host: smtp.example.com, port: 587, security: starttls, login: support,
                        password: {{file: {secret_file}}}}}
                signatures:
                  - {{alias: Example support, text: "--\\nExample Inc. support"}}
                  - {{alias: Alice at Example}}{mailbox_extra}
          - key: NOTES
            mailboxes:
              - {{address: notes@example.com, ingress: true}}
        """)


def invoice(n: int, **overrides: Any) -> dict[str, Any]:
    """The shared TicketCommand as Carol's invoice mail: markup to escape, an attachment, a second person."""
    fields: dict[str, Any] = {
        "components": ["billing"],
        "author": {"email": "carol@customer.test", "name": "Carol Customer", "member": False},
        "participants": [{"email": "dan@customer.test", "name": "Dan", "member": False}],
        "subject": f"Invoice {n} is wrong", "text": f"Please fix invoice {n}.\n<script>alert('x')</script>",
        "html": "<p>Please fix</p><script>alert('html')</script>",
        "attachments": [{"filename": "invoice.pdf", "content_type": "application/pdf", "size": 2048,
                         "sha256": "ab" * 32, "blob_ref": None}],
        "source_uidvalidity": 1,
    }
    return command(n, domain="customer.test", **{**fields, **overrides})


def post_form(client: TestClient, action: str, data: dict[str, str], *, headers: dict[str, str] | None = None,
              **options: Any) -> Any:
    """Post ``data`` as a browser does from the page the form is on (``action`` minus
    its last part): with that page's CSRF token and cookie, and deskmail's Origin."""
    page = client.get(action.rsplit("/", 1)[0], headers=headers)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    return client.post(action, data={**data, "csrf_token": token.group(1)},
                       headers={"Origin": ORIGIN, **(headers or {})}, **options)


def counts(store: TicketStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in metadata.sorted_tables}


class Waker:
    def __init__(self) -> None:
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


Make = Callable[..., tuple[TestClient, TicketStore, Config, Waker]]


@pytest.fixture
def make(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Make]:
    monkeypatch.setenv("API_IMAP_PW", IMAP_SECRET)
    secret_file = tmp_path / "smtp-password"
    secret_file.write_text(SMTP_SECRET + "\n")
    stores: list[TicketStore] = []

    def build(**options: Any) -> tuple[TestClient, TicketStore, Config, Waker]:
        config = parse_text(config_text(db_url, secret_file, **options), str(tmp_path / "deskmail.yaml"))
        store = TicketStore(config.database_url)
        store.migrate()
        stores.append(store)
        if store.get_ticket("SUPPORT-1") is None:
            store.apply(invoice(1))
        waker = Waker()
        # From loopback, where api.auth.trusted_proxies trusts a sidecar proxy by default.
        client = TestClient(create_app(config, store, waker), base_url=ORIGIN, client=("127.0.0.1", 50000))
        return client, store, config, waker

    yield build
    for store in stores:
        store.close()


# ------------------------------------------------------------------ pages


def test_pages_render_and_escape_mail_text(make: Make) -> None:
    client, store, _, _ = make()
    store.apply(invoice(2, subject="Second <b>bold</b> subject"))
    home = client.get("/")
    assert home.status_code == 200
    assert "SUPPORT-2" in home.text and "Second &lt;b&gt;bold&lt;/b&gt; subject" in home.text
    assert re.search(r'href="/queues/SUPPORT">SUPPORT</a>.*?<td class="num">2</td>', home.text, re.S)

    queue = client.get("/queues/SUPPORT")
    assert queue.status_code == 200 and "SUPPORT-1" in queue.text and "2 tickets" in queue.text

    page = client.get("/tickets/SUPPORT-1")
    assert page.status_code == 200
    body = page.text
    assert "Invoice 1 is wrong" in body and "invoice.pdf" in body
    # the text is shown escaped; the mail's HTML is never rendered
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in body
    assert "<script>alert" not in body and "alert('html')" not in body
    # the form: To prefilled with the external people, signatures, send as email on
    assert 'value="Carol Customer &lt;carol@customer.test&gt;, Dan &lt;dan@customer.test&gt;"' in body
    assert '<option value="Example support" selected>' in body
    assert re.search(r'name="send_email"[^>]*checked', body)
    assert 'option value="alice@example.com"' in body  # "Reply as" without a user header

    assert client.get("/tickets/SUPPORT-99").status_code == 404
    assert client.get("/queues/NOPE").status_code == 404
    assert client.get("/static/style.css").status_code == 200
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert client.get(probe).status_code == 200
    # which release and source revision this api runs
    [info] = [line for line in client.get("/metrics").text.splitlines() if line.startswith("deskmail_build_info{")]
    labels, value = re.fullmatch(r"deskmail_build_info\{(.*)\} (\S+)", info).groups()  # type: ignore[union-attr]
    assert dict(re.findall(r'(\w+)="([^"]*)"', labels)) == {"version": build.version(), "revision": build.revision()}
    assert float(value) == 1


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_requests_are_counted_by_route_template_never_by_path(make: Make) -> None:
    client, _, _, _ = make()
    before = client.get("/metrics").text
    for key in ("SUPPORT-1", "SUPPORT-1", "SUPPORT-99"):
        client.get(f"/api/v1/tickets/{key}")
    client.get("/no/such/page/SUPPORT-1")
    text = client.get("/metrics").text
    route = "/api/v1/tickets/{key}"
    for status, n in (("2xx", 2), ("4xx", 1)):
        grown = (_sample(text, "deskmail_api_requests_total", method="GET", route=route, status=status)
                 - _sample(before, "deskmail_api_requests_total", method="GET", route=route, status=status))
        assert grown == n, status
    assert _sample(text, "deskmail_api_requests_total", route="unmatched", status="4xx") >= 1
    assert _sample(text, "deskmail_api_request_seconds_count", route=route) >= 3
    assert "SUPPORT-1" not in "".join(line for line in text.splitlines() if line.startswith("deskmail_api_"))


def test_reply_from_the_page_is_stored_queued_and_redirects(make: Make) -> None:
    client, store, _, waker = make()
    response = post_form(client, "/tickets/SUPPORT-1/reply", data={
        "author": "alice@example.com", "text": "We fixed the invoice.", "send_email": "on",
        "to": "Carol Customer <carol@customer.test>", "cc": "dan@customer.test", "signature": "Alice at Example",
    }, follow_redirects=False)
    assert response.status_code == 303
    (entry,) = store.get_ticket("SUPPORT-1").thread  # type: ignore[union-attr]
    assert response.headers["location"] == f"/tickets/SUPPORT-1#c{entry.id}"
    assert (entry.kind, entry.delivery_status, entry.author_email) == ("mail_out", "queued", "alice@example.com")
    assert waker.woken == 1

    (row,) = store.pending_outbox()
    mail = codec("OutboundMail").decode(row.payload)
    assert row.ticket_key == "SUPPORT-1" and mail["id"] == row.id == entry.outbound_id
    assert mail["subject"] == "Re: [SUPPORT-1] Invoice 1 is wrong"
    assert (mail["from_address"], mail["alias"], mail["signature"]) == ("support@example.com", "Alice at Example", None)
    assert mail["to"] == [{"email": "carol@customer.test", "name": "Carol Customer"}]
    assert mail["cc"] == [{"email": "dan@customer.test", "name": None}]
    assert mail["in_reply_to"] == "msg-1@customer.test" and mail["references"] == ["msg-1@customer.test"]
    assert mail["message_id"] == entry.message_id and mail["comment_id"] == entry.id

    page = client.get(response.headers["location"]).text
    assert f'id="status-{entry.id}"' in page and 'data-status="queued"' in page
    assert "We fixed the invoice." in page and '<script src="/static/ticket.js" defer></script>' in page
    assert 'data-deliveries="/api/v1/tickets/SUPPORT-1/deliveries"' in page and "<script>" not in page
    assert "setTimeout(tick, 2000)" in client.get("/static/ticket.js").text


def test_an_internal_comment_from_the_page(make: Make) -> None:
    client, store, _, waker = make()
    response = post_form(client, "/tickets/SUPPORT-1/reply", data={
        "author": "bob@example.com", "text": "Customer called, all good.", "to": "carol@customer.test",
    }, follow_redirects=False)
    assert response.status_code == 303
    (entry,) = store.get_ticket("SUPPORT-1").thread  # type: ignore[union-attr]
    assert (entry.kind, entry.internal, entry.delivery_status) == ("note", True, None)
    assert store.pending_outbox() == [] and waker.woken == 1
    assert "Internal comment" in client.get("/tickets/SUPPORT-1").text


def test_a_refused_reply_shows_the_error_inline_and_stores_nothing(make: Make) -> None:
    client, store, _, _ = make(allow_outbound=False)
    before = counts(store)
    response = post_form(client, "/tickets/SUPPORT-1/reply", data={
        "author": "alice@example.com", "text": "Typed text stays.", "send_email": "on",
        "to": "carol@customer.test", "cc": "",
    })
    assert response.status_code == 403
    assert ("Queue SUPPORT does not allow sending mail outside the organization; "
            "carol@customer.test is external") in response.text
    assert ">Typed text stays.</textarea>" in response.text
    assert counts(store) == before

    missing = post_form(client, "/tickets/SUPPORT-1/reply", data={"author": "", "text": "x", "send_email": "on"})
    assert missing.status_code == 403 and "not an organization member" in missing.text
    assert counts(store) == before


# ------------------------------------------------------------------ JSON API


def test_json_api_lists_gets_and_replies(make: Make) -> None:
    client, store, _, waker = make()
    store.apply(invoice(2))
    listing = client.get("/api/v1/tickets", params={"queue": "SUPPORT", "limit": 1}).json()
    assert listing["total"] == 2 and [t["key"] for t in listing["tickets"]] == ["SUPPORT-2"]
    assert client.get("/api/v1/tickets", params={"queue": "SUPPORT", "limit": 1, "offset": 1}).json()[
        "tickets"][0]["key"] == "SUPPORT-1"

    created = client.post("/api/v1/tickets/SUPPORT-1/replies",
                          json={"text": "Done.", "author": "alice@example.com", "cc": ["frank@customer.test"]})
    assert created.status_code == 201
    comment = created.json()
    assert comment["kind"] == "mail_out" and comment["delivery"]["status"] == "queued"
    assert [r["email"] for r in comment["to"]] == ["carol@customer.test", "dan@customer.test"]
    assert comment["cc"] == [{"email": "frank@customer.test", "name": None}] and waker.woken == 1

    note = client.post("/api/v1/tickets/SUPPORT-1/replies",
                       json={"text": "internal", "author": "bob@example.com", "internal": True})
    assert note.status_code == 201 and note.json()["kind"] == "note" and note.json()["delivery"] is None

    ticket = client.get("/api/v1/tickets/SUPPORT-1").json()
    assert ticket["key"] == "SUPPORT-1" and ticket["attachments"] == ["invoice.pdf"]
    assert [e["kind"] for e in ticket["thread"]] == ["mail_out", "note"]
    assert [p["email"] for p in ticket["participants"]] == [
        "carol@customer.test", "dan@customer.test", "frank@customer.test"]

    store.record_delivery({"outbound_id": comment["delivery"]["outbound_id"], "status": "sent", "smtp_code": 250,
                           "smtp_reply": "2.0.0 Ok", "time": datetime.now(timezone.utc)})
    (delivery,) = client.get("/api/v1/tickets/SUPPORT-1/deliveries").json()
    assert (delivery["comment_id"], delivery["status"], delivery["detail"]) == (comment["id"], "sent", "250 2.0.0 Ok")


def test_json_api_errors_are_clear(make: Make) -> None:
    client, store, _, _ = make()
    before = counts(store)
    cases = [
        ("SUPPORT-99", {"text": "x", "author": "alice@example.com"}, 404, "no ticket SUPPORT-99"),
        ("SUPPORT-1", {"text": "x"}, 422, "author is required"),
        ("SUPPORT-1", {"text": "x", "author": "eve@customer.test"}, 403, "not an organization member"),
        ("SUPPORT-1", {"text": " ", "author": "alice@example.com"}, 422, "no text"),
        ("SUPPORT-1", {"text": "x", "author": "alice@example.com", "to": ["bogus"]}, 422, "not an email address"),
        ("SUPPORT-1", {"text": "x", "author": "alice@example.com", "signature": "Nope"}, 400, "no signature 'Nope'"),
    ]
    for key, body, code, detail in cases:
        response = client.post(f"/api/v1/tickets/{key}/replies", json=body)
        assert response.status_code == code, (body, response.text)
        assert detail in response.json()["detail"]
    assert client.post("/api/v1/tickets/SUPPORT-1/replies", json={"text": "x", "bogus": 1}).status_code == 422
    assert client.get("/api/v1/tickets/SUPPORT-99").status_code == 404
    assert counts(store) == before


@pytest.mark.parametrize("char", ["\r\n", "\n", "\u2028", "\x85", "\x1e"])
def test_a_line_break_in_a_header_field_is_refused_with_the_reason(make: Make, char: str) -> None:
    client, store, _, waker = make()
    before = counts(store)
    injected = f"carol@customer.test{char}Bcc: all@customer.test"
    cases = [
        ({"to": [injected]}, f"To {injected!r} contains a line break"),
        ({"to": [f"Carol{char}Bcc <carol@customer.test>"]}, "contains a line break"),
        ({"cc": [f"dan@customer.test{char}mallory@attacker.test"]}, "Cc "),
        ({"signature": f"Example support{char}Bcc: all@customer.test"}, "the signature "),
    ]
    for extra, detail in cases:
        response = client.post("/api/v1/tickets/SUPPORT-1/replies",
                               json={"text": "x", "author": "alice@example.com", **extra})
        assert response.status_code == 422, (extra, response.text)
        assert detail in response.json()["detail"], response.json()
        assert response.json()["detail"].endswith("header text must be one line")

    page = post_form(client, "/tickets/SUPPORT-1/reply", {
        "author": "alice@example.com", "text": "Typed text stays.", "send_email": "on", "to": injected, "cc": "",
    })
    assert page.status_code == 422
    assert "header text must be one line" in page.text and ">Typed text stays.</textarea>" in page.text
    assert counts(store) == before and waker.woken == 0 and store.pending_outbox() == []


def test_a_hostile_subject_and_message_id_from_a_customer_still_make_a_sendable_reply(make: Make) -> None:
    """The router keeps such mail one line and its ids msg-ids; what the store already
    holds from before is left out of the record rather than stopping the sender."""
    client, store, _, _ = make()
    store.apply(invoice(3, subject="Invoice " + "x" * 300, message_id="пример@example.org",
                        thread_key="пример@example.org"))
    created = client.post("/api/v1/tickets/SUPPORT-2/replies", json={"text": "Done.", "author": "alice@example.com"})
    assert created.status_code == 201, created.text
    (row,) = store.pending_outbox()
    mail = codec("OutboundMail").decode(row.payload)
    assert mail["in_reply_to"] is None and mail["references"] == []
    assert as_bytes(compose(mail)).isascii()


def test_json_api_refuses_external_mail_when_outbound_is_off(make: Make) -> None:
    client, store, _, waker = make(allow_outbound=False)
    before = counts(store)
    response = client.post("/api/v1/tickets/SUPPORT-1/replies", json={"text": "x", "author": "alice@example.com"})
    assert response.status_code == 403
    assert response.json()["detail"] == (
        "Queue SUPPORT does not allow sending mail outside the organization; "
        "carol@customer.test, dan@customer.test are external")
    assert counts(store) == before and waker.woken == 0
    # mail to members only is fine
    ok = client.post("/api/v1/tickets/SUPPORT-1/replies",
                     json={"text": "fyi", "author": "alice@example.com", "to": ["bob@example.com"]})
    assert ok.status_code == 201 and ok.json()["delivery"]["status"] == "queued"


def test_a_queue_without_smtp_says_so(make: Make) -> None:
    client, store, _, _ = make()
    store.apply(invoice(5, queue="NOTES", mailbox="notes@example.com"))
    response = client.post("/api/v1/tickets/NOTES-1/replies", json={"text": "x", "author": "alice@example.com"})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("Queue NOTES has no mailbox with SMTP settings")
    page = client.get("/tickets/NOTES-1").text
    assert "has no SMTP settings" in page and re.search(r'name="send_email"[^>]*disabled', page)


def test_openapi_documents_the_reply_endpoint(make: Make) -> None:
    client, _, _, _ = make()
    doc = client.get("/openapi.json").json()
    post = doc["paths"]["/api/v1/tickets/{key}/replies"]["post"]
    assert "201" in post["responses"] and "403" in post["responses"]
    assert "/api/v1/tickets/{key}" in doc["paths"] and "/api/v1/tickets" in doc["paths"]
    assert "patch" in doc["paths"]["/api/v1/tickets/{key}"]  # the workflow: test_api_workflow.py
    assert {"set_status", "version"} <= set(doc["components"]["schemas"]["ReplyIn"]["properties"])
    assert not any(p.startswith("/tickets") for p in doc["paths"])  # pages are not API
    assert client.get("/docs").status_code == 404  # no page loading Swagger UI from a CDN


# ------------------------------------------------------------------ identity


def test_user_header_identifies_the_agent(make: Make) -> None:
    client, store, _, _ = make(user_header="X-Forwarded-Email")
    assert client.get("/tickets/SUPPORT-1").status_code == 401  # no credentials at all
    assert client.get("/tickets/SUPPORT-1", headers={"X-Forwarded-Email": "eve@customer.test"}).status_code == 403
    alice = {"X-Forwarded-Email": "Alice@Example.com"}
    page = client.get("/tickets/SUPPORT-1", headers=alice)
    assert page.status_code == 200 and '<select name="author"' not in page.text and "Alice Agent" in page.text
    # the header decides; a form field naming someone else is ignored
    posted = post_form(client, "/tickets/SUPPORT-1/reply", headers=alice, follow_redirects=False,
                         data={"author": "bob@example.com", "text": "hi", "send_email": "on",
                               "to": "carol@customer.test"})
    assert posted.status_code == 303
    assert store.get_ticket("SUPPORT-1").thread[0].author_email == "alice@example.com"  # type: ignore[union-attr]
    mismatch = client.post("/api/v1/tickets/SUPPORT-1/replies", headers=alice,
                           json={"text": "x", "author": "bob@example.com"})
    assert mismatch.status_code == 403 and "cannot reply as bob@example.com" in mismatch.json()["detail"]
    assert client.post("/api/v1/tickets/SUPPORT-1/replies", headers=alice, json={"text": "x"}).status_code == 201
    assert client.get("/healthz").status_code == 200  # probes need no identity


def test_a_form_posted_from_another_site_is_refused(make: Make) -> None:
    client, store, _, _ = make()
    before = counts(store)
    reply = {"author": "alice@example.com", "text": "x", "send_email": "on", "to": "eve@elsewhere.test"}
    refused = {
        "posted from another site (https://evil.test)": {"Origin": "https://evil.test"},
        # a sandboxed iframe or a file:// page sends Origin: null
        "Origin null (a sandboxed frame or a local file) may not post": {"Origin": "null"},
        "a form post without an Origin header is refused": {"Origin": ""},  # dropped below
    }
    for reason, headers in refused.items():
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/tickets/SUPPORT-1").text)
        assert token
        sent = {k: v for k, v in headers.items() if v}
        response = client.post("/tickets/SUPPORT-1/reply", data={**reply, "csrf_token": token.group(1)},
                               headers=sent)
        assert response.status_code == 403 and reason in response.text, (reason, response.text)
    # the test mail to an arbitrary address is refused the same way
    response = client.post("/queues/SUPPORT/settings/test", headers={"Origin": "null"},
                           data={"mailbox": "support@example.com", "to": "eve@elsewhere.test"})
    assert response.status_code == 403 and "Origin null" in response.text
    # the JSON API: a foreign Origin is refused, as JSON
    api = client.post("/api/v1/tickets/SUPPORT-1/replies", headers={"Origin": "https://evil.test"},
                      json={"text": "x", "author": "alice@example.com"})
    assert api.status_code == 403 and api.json()["detail"].startswith("posted from another site")
    assert counts(store) == before

    # behind a proxy that rewrites Host, the forwarded host is the site
    proxied = post_form(client, "/tickets/SUPPORT-1/reply", follow_redirects=False,
                        headers={"Origin": "https://desk.example.com", "X-Forwarded-Host": "desk.example.com"},
                        data={"author": "alice@example.com", "text": "x"})
    assert proxied.status_code == 303


def test_a_form_without_this_browsers_token_is_refused(make: Make) -> None:
    client, store, _, _ = make()
    before = counts(store)
    own = {"Origin": ORIGIN}
    reply = {"author": "alice@example.com", "text": "x"}
    page = client.get("/tickets/SUPPORT-1")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token and page.cookies.get("deskmail_csrf") == token.group(1)
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie

    no_field = client.post("/tickets/SUPPORT-1/reply", headers=own, data=reply)
    assert no_field.status_code == 403 and "the form has no CSRF token" in no_field.text
    nonce = token.group(1).split(".")[0]
    forged = client.post("/tickets/SUPPORT-1/reply", headers=own, data={**reply, "csrf_token": nonce + ".AAAA"})
    assert forged.status_code == 403 and "does not match" in forged.text
    # a token that is well-formed and matches a planted cookie, but was not signed by this api
    client.cookies.set("deskmail_csrf", nonce + ".AAAA")
    planted = client.post("/tickets/SUPPORT-1/reply", headers=own, data={**reply, "csrf_token": nonce + ".AAAA"})
    assert planted.status_code == 403 and "expired" in planted.text
    client.cookies.clear()
    no_cookie = client.post("/tickets/SUPPORT-1/reply", headers=own, data={**reply, "csrf_token": token.group(1)})
    assert no_cookie.status_code == 403 and "no CSRF cookie" in no_cookie.text
    assert counts(store) == before
    # the page hands out a fresh token again, and the form goes through with it
    assert post_form(client, "/tickets/SUPPORT-1/reply", reply, follow_redirects=False).status_code == 303


def test_a_token_signed_with_the_session_secret_survives_a_restart(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, store, config, _ = make()
    secret = tmp_path / "session-secret"
    secret.write_text("a-long-random-session-secret\n")
    text = config_text(config.database_url, tmp_path / "smtp-password").replace(
        "api:\n", f"api:\n  session_secret: {{file: {secret}}}\n")
    keyed = parse_text(text, str(tmp_path / "deskmail.yaml"))
    assert keyed.api_session_secret is not None and "a-long-random" not in repr(keyed)
    first, second = (TestClient(create_app(keyed, store), base_url=ORIGIN) for _ in range(2))
    token = re.search(r'name="csrf_token" value="([^"]+)"', first.get("/tickets/SUPPORT-1").text)
    assert token
    second.cookies.set("deskmail_csrf", token.group(1))
    response = second.post("/tickets/SUPPORT-1/reply", headers={"Origin": ORIGIN}, follow_redirects=False,
                           data={"author": "alice@example.com", "text": "x", "csrf_token": token.group(1)})
    assert response.status_code == 303
    # without the secret each start has its own key
    client.cookies.set("deskmail_csrf", token.group(1))
    other = client.post("/tickets/SUPPORT-1/reply", headers={"Origin": ORIGIN},
                        data={"author": "alice@example.com", "text": "x", "csrf_token": token.group(1)})
    assert other.status_code == 403


def test_a_host_that_is_not_deskmails_is_refused(make: Make) -> None:
    client, _, _, _ = make()
    for host in ("evil.test", "evil.test:8080", "127.0.0.1.evil.test:8080"):
        page = client.get("/tickets/SUPPORT-1", headers={"Host": host})
        assert page.status_code == 403 and "is not this deskmail" in page.text, host
        assert "Invoice 1" not in page.text
        api = client.get("/api/v1/tickets", headers={"Host": host})
        assert api.status_code == 403 and "is not this deskmail" in api.json()["detail"]
    for host in ("localhost:8080", "127.0.0.1:9999", "[::1]:8080", "LOCALHOST"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    for probe in ("/healthz", "/readyz", "/metrics"):  # kubelet and Prometheus use the pod's IP
        assert client.get(probe, headers={"Host": "10.1.2.3:8080"}).status_code == 200

    public, _, _, _ = make(public_url="https://desk.example.com/")
    public.base_url = "https://127.0.0.1:8080"  # as behind a TLS proxy: the form cookie is Secure
    home = public.get("/", headers={"Host": "desk.example.com"})
    assert home.status_code == 200 and "secure" in home.headers["set-cookie"].lower()
    assert public.get("/", headers={"Host": "other.example.com"}).status_code == 403
    # a proxy that sends Host as the upstream's address: the browser's Origin is public_url
    assert post_form(public, "/tickets/SUPPORT-1/reply", {"author": "alice@example.com", "text": "x"},
                     headers={"Origin": "https://desk.example.com"}, follow_redirects=False).status_code == 303
    assert post_form(public, "/tickets/SUPPORT-1/reply", {"author": "alice@example.com", "text": "x"},
                     headers={"Origin": "http://desk.example.com:8443"}).status_code == 403


def test_every_response_carries_the_security_headers(make: Make) -> None:
    client, _, _, _ = make()
    csp = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    responses = {
        "page": client.get("/tickets/SUPPORT-1"),
        "html error": client.get("/tickets/SUPPORT-99"),
        "json": client.get("/api/v1/tickets"),
        "json error": client.get("/api/v1/tickets/SUPPORT-99"),
        "static": client.get("/static/style.css"),
        "openapi": client.get("/openapi.json"),
        "metrics": client.get("/metrics"),
        "refusal": client.get("/", headers={"Host": "evil.test"}),
        "no page": client.get("/nowhere"),
    }
    for name, response in responses.items():
        assert response.headers.get("content-security-policy") == csp, name
        assert response.headers.get("x-content-type-options") == "nosniff", name
        assert response.headers.get("referrer-policy") == "same-origin", name
        assert response.headers.get("x-frame-options") == "DENY", name
    # Swagger UI would load its code from a CDN: no documentation page, the document stays
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404


def test_mail_html_is_shown_cleaned_and_images_only_on_request(make: Make) -> None:
    client, store, _, _ = make()
    html = ('<p onclick="alert(1)">Please <b>fix</b> <a href="javascript:alert(2)">this</a> and '
            '<a href="https://customer.test/help">that</a></p><img src="https://tracker.test/pixel.gif">'
            '<script>alert("html")</script><style>body{display:none}</style><form action="/tickets/x"></form>')
    store.apply(invoice(2, html=html))
    text = client.get("/tickets/SUPPORT-2")
    assert 'id="view-html" href="/tickets/SUPPORT-2?html=1"' in text.text and "<b>fix</b>" not in text.text

    shown = client.get("/tickets/SUPPORT-2?html=1")
    body = shown.text
    assert '<div class="body html"><p>Please <b>fix</b> <a rel="noopener noreferrer nofollow">this</a>' in body
    assert '<a href="https://customer.test/help" rel="noopener noreferrer nofollow">that</a>' in body
    for gone in ("onclick", "javascript:", 'alert("html")', "display:none", "tracker.test", 'action="/tickets/x"'):
        assert gone not in body, gone
    assert "1 remote image not loaded" in body
    assert 'id="load-images" href="/tickets/SUPPORT-2?html=1&amp;images=1"' in body
    assert "img-src 'self';" in shown.headers["content-security-policy"]

    loaded = client.get("/tickets/SUPPORT-2?html=1&images=1")
    assert '<img src="https://tracker.test/pixel.gif">' in loaded.text and "Remote images are loaded" in loaded.text
    assert "img-src 'self' https:;" in loaded.headers["content-security-policy"]
    assert "script-src 'self';" in loaded.headers["content-security-policy"]
    # the next page is strict again
    assert "img-src 'self';" in client.get("/tickets/SUPPORT-2").headers["content-security-policy"]


def test_attachments_are_downloads_of_a_safe_type(make: Make) -> None:
    from services.common.blobs import FolderBlobStore

    client, store, config, _ = make()
    blobs = FolderBlobStore(config.blob_path)
    contents = {
        "page.html": (b"<script>alert(document.cookie)</script>", "text/html", "application/octet-stream"),
        "logo.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "image/svg+xml",
                     "application/octet-stream"),
        "data.xml": (b"<?xml version='1.0'?><x/>", "application/xml", "application/octet-stream"),
        "photo.png": (b"\x89PNG\r\n\x1a\n", "image/png", "image/png"),
        "invoice.pdf": (b"%PDF-1.4", "application/pdf", "application/pdf"),
        "notes.txt": (b"<b>plain</b>", "text/plain; charset=utf-8", "text/plain; charset=utf-8"),
        '../../"Rechnung" \u202eKÖLN.exe': (b"MZ", "application/pdf", "application/pdf"),
    }
    files = [{"filename": name, "content_type": declared, "size": len(data), "sha256": "00" * 32,
              "blob_ref": blobs.put(data, durable=False)} for name, (data, declared, _) in contents.items()]
    files.append({"filename": "gone.bin", "content_type": "application/pdf", "size": 3, "sha256": "00" * 32,
                  "blob_ref": "sha256:" + "ef" * 32})
    store.apply(invoice(2, attachments=files))
    page = client.get("/tickets/SUPPORT-2").text
    assert '<a class="file" href="/tickets/SUPPORT-2/files/0" download>page.html</a>' in page

    for number, (name, (data, _, served)) in enumerate(contents.items()):
        response = client.get(f"/tickets/SUPPORT-2/files/{number}")
        assert response.status_code == 200 and response.content == data, name
        assert response.headers["content-type"] == served, name
        assert response.headers["content-disposition"].startswith("attachment; filename="), name
        assert response.headers["content-security-policy"] == "default-src 'none'; sandbox; frame-ancestors 'none'"
        assert response.headers["x-content-type-options"] == "nosniff"
    odd = client.get(f"/tickets/SUPPORT-2/files/{len(contents) - 1}").headers["content-disposition"]
    assert odd == ("attachment; filename=\"_Rechnung_ K_LN.exe\"; "
                   "filename*=UTF-8''%22Rechnung%22%20K%C3%96LN.exe")
    assert client.get(f"/tickets/SUPPORT-2/files/{len(contents)}").status_code == 404  # blob missing
    assert client.get("/tickets/SUPPORT-2/files/99").status_code == 404
    assert client.get("/tickets/SUPPORT-1/files/0").status_code == 404  # its pdf was never stored


def test_attachments_download_from_an_s3_bucket_and_an_outage_is_a_503(
        make: Make, s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.blobs import blob_store
    from tests.harness.s3 import SECRET_KEY, S3Server

    for name, value in S3Server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3.bucket()
    client, store, config, _ = make(blobs=s3.config_yaml(bucket))
    report = b"%PDF-1.4 " + bytes(range(256)) * 4000  # about 1 MB
    files = [{"filename": "report.pdf", "content_type": "application/pdf", "size": len(report), "sha256": "00" * 32,
              "blob_ref": blob_store(config).put(report, durable=False)},
             {"filename": "gone.bin", "content_type": "application/pdf", "size": 3, "sha256": "00" * 32,
              "blob_ref": "sha256:" + "ef" * 32}]
    store.apply(invoice(2, attachments=files))
    download = client.get("/tickets/SUPPORT-2/files/0")
    assert (download.status_code, download.headers["content-type"], download.content) == (
        200, "application/pdf", report)
    assert client.get("/tickets/SUPPORT-2/files/1").status_code == 404  # not in the bucket
    assert not config.blob_path.exists()

    # the bucket is gone (or the service down): a temporary failure, never a 500, never a secret
    s3.client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in s3.keys(bucket)]})
    s3.client().delete_bucket(Bucket=bucket)
    outage = client.get("/tickets/SUPPORT-2/files/0", headers={"Accept": "application/json"})
    assert outage.status_code == 503 and "NoSuchBucket" in outage.json()["detail"]
    assert SECRET_KEY not in outage.text


def test_an_inline_image_shows_where_the_mail_places_it(make: Make) -> None:
    from services.common.blobs import FolderBlobStore

    client, store, config, _ = make()
    png = b"\x89PNG\r\n\x1a\n"
    ref = FolderBlobStore(config.blob_path).put(png, durable=False)
    files = [{"filename": "logo.png", "content_type": "image/png", "size": len(png), "sha256": "00" * 32,
              "blob_ref": ref, "content_id": "logo@customer.test"},
             {"filename": "report.pdf", "content_type": "application/pdf", "size": 3, "sha256": "00" * 32,
              "blob_ref": ref}]
    store.apply(invoice(2, html='<p>Our logo: <img src="cid:Logo@customer.test"></p>', attachments=files))
    page = client.get("/tickets/SUPPORT-2?html=1")
    assert '<p>Our logo: <img src="/tickets/SUPPORT-2/files/0"></p>' in page.text
    assert "img-src 'self';" in page.headers["content-security-policy"]  # no remote images asked for
    image = client.get("/tickets/SUPPORT-2/files/0")
    assert (image.status_code, image.headers["content-type"], image.content) == (200, "image/png", png)


# ------------------------------------------------------------------ settings


def test_settings_show_sources_never_secrets(make: Make) -> None:
    client, _, _, _ = make()
    page = client.get("/queues/SUPPORT/settings")
    assert page.status_code == 200
    text = page.text
    assert IMAP_SECRET not in text and SMTP_SECRET not in text
    assert "password: set from environment variable API_IMAP_PW" in text
    assert "password: read from file " in text
    assert "imap.example.com:993" in text and "smtp.example.com:587" in text and "starttls" in text
    assert "Example support" in text and "Example Inc. support" in text
    assert "Check connection" in text and "Send a test email" in text
    assert re.search(r"Allow sending mail outside the organization</dt><dd>yes", text)
    assert client.get("/queues/NOPE/settings").status_code == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_check_connection_and_test_email_against_real_servers(
    make: Make, dovecot: Any, unique: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.harness.smtp import SmtpServer

    address = f"{unique('support')}@example.com"
    dovecot.add_user(address, IMAP_SECRET)
    with SmtpServer({"support": SMTP_SECRET}) as smtp:
        extra = textwrap.indent(textwrap.dedent(f"""
            - address: {address}
              accept_external: true
              imap: {{host: 127.0.0.1, port: {dovecot.imaps_port}, security: ssl, cafile: {dovecot.cafile},
                      password: {{env: API_IMAP_PW}}}}
              smtp: {{host: 127.0.0.1, port: {smtp.port}, security: starttls, login: support,
                      cafile: {smtp.cafile}, password: {{env: API_SMTP_PW}}}}"""), " " * 14)
        monkeypatch.setenv("API_SMTP_PW", SMTP_SECRET)
        client, _, _, _ = make(mailbox_extra=extra)
        checked = post_form(client, "/queues/SUPPORT/settings/check", data={"mailbox": address})
        assert checked.status_code == 200
        steps = re.findall(r'<li class="(ok|fail)"><span class="mark">(.)</span> ([\w-]+)', checked.text)
        assert [(cls, name) for cls, _, name in steps] == [
            ("ok", "dns"), ("ok", "connect"), ("ok", "tls"), ("ok", "login"), ("ok", "select"),
            ("ok", "smtp-connect"), ("ok", "smtp-tls"), ("ok", "smtp-login")]
        assert all(mark == "✓" for _, mark, _ in steps)

        sent = post_form(client, "/queues/SUPPORT/settings/test",
                           data={"mailbox": address, "to": "carol@customer.test", "signature": ""})
        assert sent.status_code == 200 and "Test email accepted by the server: carol@customer.test: 250" in sent.text
        (received,) = smtp.received()
        assert received.rcpt_tos == ("carol@customer.test",)
        for page in (checked.text, sent.text):
            assert IMAP_SECRET not in page and SMTP_SECRET not in page

        dovecot.add_user(address, "changed-elsewhere")
        failed = post_form(client, "/queues/SUPPORT/settings/check", data={"mailbox": address}).text
        assert re.search(r'<li class="fail"><span class="mark">✗</span> login', failed)


# ------------------------------------------------------------------ author verified


def test_a_member_whose_from_was_not_proven_is_marked_not_verified(make: Make) -> None:
    client, store, _, _ = make()
    alice = {"email": "alice@example.com", "name": "Alice Agent", "member": True}
    store.apply(invoice(2, author=alice))  # trusted by its From line only
    store.apply(invoice(3, author={**alice, "verified": True}))
    store.apply(invoice(4, action="comment", classification="reply", author=alice,
                        in_reply_to="msg-3@customer.test", attachments=[]))
    store.apply(invoice(5, action="comment", classification="reply", author={**alice, "verified": True},
                        in_reply_to="msg-2@customer.test", attachments=[]))

    unproven = client.get("/api/v1/tickets/SUPPORT-2").json()
    proven = client.get("/api/v1/tickets/SUPPORT-3").json()
    assert (unproven["author_member"], unproven["author_verified"]) == (True, False)
    assert (proven["author_member"], proven["author_verified"]) == (True, True)
    assert [e["author_verified"] for e in unproven["thread"]] == [True]
    assert [e["author_verified"] for e in proven["thread"]] == [False]
    outsider = client.get("/api/v1/tickets/SUPPORT-1").json()
    assert (outsider["author_member"], outsider["author_verified"]) == (False, False)

    badge = ('<span class="tag unverified" title="the From line was not proven by sender authentication">'
             "not verified</span>")
    page = client.get("/tickets/SUPPORT-2").text
    opening = page.split('id="opening"', 1)[1].split("</header>", 1)[0]
    assert badge in opening and "external" not in opening
    assert badge not in page.split('id="opening"', 1)[1].split("</header>", 1)[1]  # the proven reply
    page = client.get("/tickets/SUPPORT-3").text
    opening, rest = page.split('id="opening"', 1)[1].split("</header>", 1)
    assert badge not in opening
    assert rest.count(badge) == 1 and rest.split(badge, 1)[0].count("<article") == 1  # the unproven reply
    # An outsider is shown as external, never as "not verified".
    page = client.get("/tickets/SUPPORT-1").text
    assert badge not in page and '<span class="tag external">external</span>' in page


def test_a_reply_shows_its_new_text_and_keeps_the_quote_collapsed(make: Make) -> None:
    client, store, _, _ = make()
    text = "Fixed, thanks.\n\nOn Tue, Dec 1, 2026 at 10:15 AM Maria <support@example.com> wrote:\n> <b>Paid?</b>\n"
    store.apply(invoice(2, action="comment", classification="reply", in_reply_to="msg-1@customer.test", html=None,
                        attachments=[], text=text, quoted_from=text.index("On Tue"), charset_detected="cp1251"))
    ticket = client.get("/api/v1/tickets/SUPPORT-1").json()
    [entry] = ticket["thread"]
    assert (entry["text"], entry["quoted"], entry["charset_detected"]) == (
        "Fixed, thanks.", text[text.index("On Tue"):], "cp1251")
    assert ticket["description"].startswith("Please fix invoice 1.") and ticket["charset_detected"] is None
    comment = client.get("/api/v1/tickets/SUPPORT-1").json()["thread"][0]
    assert comment == entry
    page = client.get("/tickets/SUPPORT-1").text
    details = re.search(r'<details class="quoted" id="quoted-\d+"><summary>show quoted text</summary>'
                        r'<div class="body">(.*?)</div></details>', page, re.S)
    assert details is not None and "&gt; &lt;b&gt;Paid?&lt;/b&gt;" in details.group(1)
    assert page.index("Fixed, thanks.") < details.start()
    # The HTML rendering is split too: the new part shown, the history collapsed.
    html = ('<div>Fixed, <b>thanks</b>.</div><div class="gmail_quote">On Tue, Dec 1, 2026 Maria wrote:'
            '<blockquote class="gmail_quote"><i>Paid?</i></blockquote></div>')
    store.apply(invoice(3, action="comment", classification="reply", in_reply_to="msg-1@customer.test", html=html,
                        attachments=[], text=text, quoted_from=text.index("On Tue")))
    with_html = client.get("/tickets/SUPPORT-1?html=1").text
    body, quote = re.findall(r'<div class="body html">(.*?)</div>', with_html, re.S)[-2:]
    assert "<b>thanks</b>" in body and "Paid?" not in body
    assert "<i>Paid?</i>" in quote and re.search(r'<summary>show quoted text</summary><div class="body html">'
                                                 r"<div>On Tue, Dec 1, 2026 Maria wrote:", with_html)
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"quoted", "charset_detected"} <= set(schema["CommentOut"]["properties"])
    assert "charset_detected" in schema["TicketOut"]["properties"]
