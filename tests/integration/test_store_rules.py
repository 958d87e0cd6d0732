"""What routing rules set, through the store (SQLite and PostgreSQL), the JSON API, the page and the CLI.

The router's part is in tests/unit/test_rules.py; here a TicketCommand carries
the rules' fields as the router writes them, and the ticketer applies them only
when the mail opens a ticket.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from services.api.app import create_app
from services.common.config import Config, parse_text
from services.common.routing import dropped_reason
from services.tickets import InvalidCommand, TicketStore
from tests.harness.records import command
from tests.harness.stack import REPO

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

ORIGIN = "http://127.0.0.1:8080"
ANN = "ann@example.com"
RULED = {"new_ticket_queue": None, "assignee": ANN, "assignee_rule": "vip-customers", "priority": "high",
         "tags": ["vip", "contract"], "matched_rules": ["vip-customers", "invoices"]}


def ruled(n: int, **overrides: Any) -> dict[str, Any]:
    """Carol's mail to SUPPORT as the router writes it when two rules matched."""
    return command(n, domain="bigcorp.test", **{**RULED, **overrides})


@pytest.fixture
def store(db_url: str) -> Iterator[TicketStore]:
    with TicketStore(db_url) as s:
        s.migrate()
        yield s


# -- the store ------------------------------------------------------------------


def test_a_new_ticket_gets_priority_tags_assignee_and_rules(store: TicketStore) -> None:
    assert store.apply(ruled(1)).ticket_key == "SUPPORT-1"
    t = store.get_ticket("SUPPORT-1")
    assert t is not None
    assert (t.priority, t.tags, t.matched_rules, t.assignee, t.version) == (
        "high", ("contract", "vip"), ("vip-customers", "invoices"), ANN, 1)
    [event] = t.events
    assert (event.kind, event.actor, event.old_value, event.new_value, event.reason) == (
        "assignee", None, "", ANN, "rule vip-customers")
    assert event.created_at == t.created_at
    # counted as the assignee's from the start, so the "assigned to" views and the gauge agree
    assert store.ticket_counts(["SUPPORT"]) == {("SUPPORT", "open", ANN): 1}


def test_a_ticket_no_rule_matched_has_none_of_it(store: TicketStore) -> None:
    store.apply(command(1))
    t = store.get_ticket("SUPPORT-1")
    assert t is not None and (t.priority, t.tags, t.matched_rules, t.assignee, t.events) == (None, (), (), None, ())
    assert store.ticket_counts(["SUPPORT"]) == {("SUPPORT", "open", ""): 1}


def test_a_moved_mail_opens_its_ticket_in_the_target_queue_and_threads_there(store: TicketStore) -> None:
    assert store.apply(ruled(1, new_ticket_queue="BILLING")).ticket_key == "BILLING-1"
    t = store.get_ticket("BILLING-1")
    assert t is not None and (t.queue, t.number, t.priority) == ("BILLING", 1, "high")
    assert store.ticket_counts() == {("BILLING", "open", ANN): 1}
    # The same mail read again (a UIDVALIDITY change: a new command id and UID) is known in BILLING.
    again = ruled(1, new_ticket_queue="BILLING", id="cmd-1-again", source_uid=99)
    assert (store.apply(again).outcome, store.apply(again).ticket_key) == ("duplicate", "BILLING-1")
    # An answer that arrives at BILLING's address threads into the ticket by its Message-ID.
    answer = command(2, queue="BILLING", mailbox="billing@example.com", action="comment", classification="reply",
                     in_reply_to="msg-1@bigcorp.test")
    assert store.apply(answer).ticket_key == "BILLING-1"
    # At SUPPORT's address it does not: threading never crosses queues.
    stray = command(3, action="comment", classification="reply", in_reply_to="msg-1@bigcorp.test")
    assert store.apply(stray).ticket_key == "SUPPORT-1"


def test_a_comment_on_a_known_ticket_is_not_changed_by_the_rules(store: TicketStore) -> None:
    store.apply(command(1))
    reply = ruled(2, action="comment", classification="reply", in_reply_to="msg-1@customer.org",
                  new_ticket_queue="BILLING")
    assert store.apply(reply).outcome == "commented"
    t = store.get_ticket("SUPPORT-1")
    assert t is not None and (t.priority, t.tags, t.matched_rules, t.assignee, t.events) == (None, (), (), None, ())
    assert store.get_ticket("BILLING-1") is None


def test_a_reply_that_finds_no_thread_opens_its_ticket_with_the_rules(store: TicketStore) -> None:
    reply = ruled(1, action="comment", classification="reply", in_reply_to="unknown@elsewhere.test",
                  new_ticket_queue="BILLING")
    assert store.apply(reply).outcome == "created"
    t = store.get_ticket("BILLING-1")
    assert t is not None and (t.assignee, t.tags) == (ANN, ("contract", "vip"))


def test_a_dropped_mail_is_suspended_under_the_rules_name(store: TicketStore) -> None:
    reason = dropped_reason("spam", "SUPPORT")
    assert store.apply(command(1, action="reject", reason=reason, raw_ref="sha256:" + "ab" * 32,
                               matched_rules=["spam"])).outcome == "rejected"
    [item] = store.list_suspended(["SUPPORT"], "spam").items
    assert (item.reason_code, item.reason) == ("spam", "spam: dropped by routing rule spam of queue SUPPORT")
    assert store.suspended_counts("SUPPORT") == {("SUPPORT", "spam"): 1}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("priority", "extreme", "priority must be one of low, normal, high, urgent, not 'extreme'"),
    ("tags", ["x" * 65], "tag is longer than 64 characters"),
    ("tags", [f"t{i}" for i in range(51)], "at most 50 tags"),
    ("matched_rules", ["r" * 65], "matched rule is longer than 64 characters"),
    ("assignee", "a" * 321, "assignee is longer than 320 characters"),
    ("new_ticket_queue", "Q" * 65, "new_ticket_queue is longer than 64 characters"),
])
def test_rule_fields_are_checked_before_anything_is_written(store: TicketStore, field: str, value: Any,
                                                            message: str) -> None:
    with pytest.raises(InvalidCommand, match=message):
        store.apply(ruled(1, **{field: value}))
    assert store.get_ticket("SUPPORT-1") is None


def test_the_database_refuses_an_unknown_priority(store: TicketStore) -> None:
    store.apply(ruled(1))
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(text("UPDATE tickets SET priority = 'extreme'"))
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE tickets SET priority = 'urgent'"))
    assert store.get_ticket("SUPPORT-1").priority == "urgent"  # type: ignore[union-attr]


# -- the JSON API, the page and the CLI -------------------------------------------


CONFIG = """\
database: {{url: "{url}"}}
data_dir: {data}
api: {{listen: 127.0.0.1:8080}}
organization:
  members:
    - {{email: ann@example.com, name: Ann Agent}}
queues:
  - key: SUPPORT
    mailboxes: [{{address: support@example.com, ingress: true, accept_external: true}}]
    rules:
      - {{name: vip-customers, match: {{from: "@bigcorp.test"}}, set: {{assignee: ann@example.com}}}}
      - {{name: spam, match: {{header: {{name: X-Spam-Flag}}}}, drop: true}}
  - key: BILLING
    mailboxes: [{{address: billing@example.com, ingress: true}}]
"""


@pytest.fixture
def config(store: TicketStore, db_url: str, tmp_path: Path) -> Config:
    path = tmp_path / "deskmail.yaml"
    path.write_text(CONFIG.format(url=db_url, data=tmp_path / "data"), encoding="utf-8")
    return parse_text(path.read_text(encoding="utf-8"), str(path))


def test_the_api_and_the_page_show_priority_tags_and_rules(store: TicketStore, config: Config) -> None:
    store.apply(ruled(1, new_ticket_queue="BILLING"))
    store.apply(command(2))
    client = TestClient(create_app(config, store), base_url=ORIGIN, client=("127.0.0.1", 50000))
    ticket = client.get("/api/v1/tickets/BILLING-1").json()
    assert {k: ticket[k] for k in ("queue", "assignee", "priority", "tags", "rules")} == {
        "queue": "BILLING", "assignee": ANN, "priority": "high", "tags": ["contract", "vip"],
        "rules": ["vip-customers", "invoices"]}
    assert ticket["events"][0]["reason"] == "rule vip-customers"
    plain = client.get("/api/v1/tickets/SUPPORT-1").json()
    assert (plain["priority"], plain["tags"], plain["rules"]) == (None, [], [])
    schema = client.get("/openapi.json").json()["components"]["schemas"]["TicketOut"]["properties"]
    assert {"priority", "tags", "rules"} <= set(schema)

    page = client.get("/tickets/BILLING-1").text
    assert '<dd id="detail-priority">high</dd>' in page
    assert '<dd id="detail-tags"><span class="tag">contract</span> <span class="tag">vip</span></dd>' in page
    assert '<dd id="detail-rules">vip-customers, invoices</dd>' in page
    plain_page = client.get("/tickets/SUPPORT-1").text
    assert '<dd id="detail-priority">none</dd>' in plain_page and 'id="detail-rules"' not in plain_page


def test_the_suspended_tab_filters_by_a_drop_rules_name(store: TicketStore, config: Config) -> None:
    store.apply(command(1, action="reject", reason=dropped_reason("spam", "SUPPORT"), raw_ref="sha256:" + "ab" * 32))
    client = TestClient(create_app(config, store), base_url=ORIGIN, client=("127.0.0.1", 50000))
    listed = client.get("/queues/SUPPORT/suspended?reason=spam")
    assert listed.status_code == 200 and "Subject 1" in listed.text
    assert "?reason=spam" in client.get("/queues/SUPPORT/suspended").text  # a tab of its own
    assert client.get("/queues/SUPPORT/suspended?reason=vip-customers").status_code == 200  # "-" is a name's
    assert client.get("/queues/SUPPORT/suspended?reason=a%20b").status_code == 400


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # a subprocess pays its imports: once is enough
def test_tickets_show_json_carries_priority_tags_and_rules(store: TicketStore, config: Config) -> None:
    store.apply(ruled(1, new_ticket_queue="BILLING"))

    def show(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "services.cli", "tickets", "show", "BILLING-1", *args,
                                 "--config", config.path], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    shown = json.loads(show("--json"))
    assert {k: shown[k] for k in ("assignee", "priority", "tags", "rules")} == {
        "assignee": ANN, "priority": "high", "tags": ["contract", "vip"], "rules": ["vip-customers", "invoices"]}
    assert "\npriority high · tags contract, vip · rules vip-customers, invoices\n" in show()
