"""Mail in a real Dovecot mailbox becomes tickets, through a real broker and the real processes."""

from __future__ import annotations

import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from services.common.codec import codec
from services.tickets import TicketStore
from tests.harness import mails
from tests.harness.stack import Stack, wait_for

pytestmark = pytest.mark.e2e


def _config(unique, dovecot, db_url: str, data: Path, support: str, internal: str, broken: str | None = None) -> str:
    topics = {k: unique(f"e2e-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    broken_box = ""
    if broken:
        broken_box = f"""
              - address: {broken}
                accept_external: true
                imap: {{host: {dovecot.host}, port: {dovecot.imaps_port}, security: ssl, cafile: {dovecot.cafile},
                        password: {{env: E2E_WRONG_PW}}}}"""
    return textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("e2e-group")}
          partitions: 4
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {{inbound: {topics["inbound"]}, commands: {topics["commands"]}, outbound: {topics["outbound"]},
                   events: {topics["events"]}, deadletter: {topics["deadletter"]}}}
        database: {{url: "{db_url}"}}
        data_dir: {data}
        fetcher: {{poll_interval_seconds: 1, batch_size: 50, backoff_initial_seconds: 0.5, backoff_max_seconds: 2}}
        organization:
          domains: [example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [support]}}
        queues:
          - key: SUPPORT
            access: [group:support]
            mailboxes:
              - address: {support}
                accept_external: true
                ticket: {{type: question, components: [billing, web]}}
                imap: {{host: {dovecot.host}, port: {dovecot.imaps_port}, security: ssl, cafile: {dovecot.cafile},
                        password: {{env: E2E_PW}}}}{broken_box}
          - key: INTERNAL
            access: [group:support]
            mailboxes:
              - address: {internal}
                accept_external: false
                ticket: {{type: task, components: [ops]}}
                imap: {{host: {dovecot.host}, port: {dovecot.imap_port}, security: starttls, cafile: {dovecot.cafile},
                        password: {{env: E2E_PW}}}}
        """)


@pytest.fixture
def setup(tmp_path, dovecot, broker, unique):
    def make(db_url: str | None = None, with_broken: bool = False) -> tuple[Stack, str, str]:
        support = f"{unique('support')}@example.com"
        internal = f"{unique('internal')}@example.com"
        for address in (support, internal):
            dovecot.add_user(address, "pw-good")
        broken = None
        if with_broken:
            broken = f"{unique('broken')}@example.com"
            dovecot.add_user(broken, "the-real-one")
        url = db_url or f"sqlite:///{tmp_path / 'tickets.db'}"
        text = _config(unique, dovecot, url, tmp_path / "data", support, internal, broken)
        stack = Stack(text, tmp_path, broker.bootstrap,
                      env={"E2E_PW": "pw-good", "E2E_WRONG_PW": "wrong-password-xyzzy"})
        stack.create_topics()
        stacks.append(stack)
        return stack, support, internal

    stacks: list[Stack] = []
    yield make
    for stack in stacks:
        stack.stop()


def _append_slowly(dovecot, address: str, raws: list[bytes]) -> None:
    for start in range(0, len(raws), 50):
        dovecot.append_many(address, "pw-good", raws[start:start + 50])
        time.sleep(0.25)


def _tickets(stack: Stack) -> list:
    return TicketStore(stack.config.database_url).list_tickets(limit=10_000)


def test_mixed_mail_becomes_tickets_and_a_reply_becomes_a_comment(setup, dovecot, broker):
    stack, support, internal = setup(with_broken=True)
    sent = [mails.mixed(i, f"customer{i}@customer.test", support) for i in range(50)]
    dovecot.append_many(support, "pw-good", [raw for raw, _, _ in sent])
    # a member writes to the internal queue; an outsider is refused there
    member_raw, _, _ = mails.mixed(1000, "alice@example.com", internal)
    outsider_raw, _, _ = mails.mixed(1001, "mallory@customer.test", internal)
    dovecot.append_many(internal, "pw-good", [member_raw, outsider_raw])

    stack.start("ticketer", "router", "fetcher")
    wait_for(lambda: len(_tickets(stack)) >= 51, 90, "51 tickets")

    tickets = _tickets(stack)
    support_tickets = [t for t in tickets if t.queue == "SUPPORT"]
    assert len(support_tickets) == 50
    assert sorted(t.key for t in support_tickets) == sorted(f"SUPPORT-{n}" for n in range(1, 51))
    assert {t.type for t in support_tickets} == {"question"}
    assert {tuple(t.components) for t in support_tickets} == {("billing", "web")}
    assert sorted(t.summary for t in support_tickets) == sorted(subject for _, _, subject in sent)
    internal_tickets = [t for t in tickets if t.queue == "INTERNAL"]
    assert [(t.key, t.author_email, t.type) for t in internal_tickets] == [("INTERNAL-1", "alice@example.com", "task")]

    # bodies were decoded: KOI8-R, base64 UTF-8, HTML-only converted to text
    store = TicketStore(stack.config.database_url)
    by_subject = {t.summary: t for t in support_tickets}
    koi = store.get_ticket(by_subject[sent[4][2]].key)
    assert "Где мой заказ 4?" in koi.description
    html_only = store.get_ticket(by_subject[sent[1][2]].key)
    assert "Hello from HTML message 1." in html_only.description

    # the inbound topic holds every mail of the mailbox in UID order
    consumer = KafkaConsumer(stack.config.topics["inbound"], bootstrap_servers=broker.bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000)
    uids = [codec("InboundMail").decode(r.value)["uid"] for r in consumer if r.key == support.encode()]
    consumer.close()
    assert uids == sorted(uids) and len(uids) == 50

    # the outsider's mail made no ticket, and the refusal is visible
    assert stack.metric("router", "deskmail_router_rejections_total", reason="external_not_accepted") == 1
    assert "mallory@customer.test" in stack.log("router") and '"msg": "rejected"' in stack.log("router")

    # the mailbox with a wrong password is reported, and did not stop the others
    assert stack.metric("fetcher", "deskmail_fetcher_mailbox_up", mailbox=[m for m in stack.config.mailboxes
                        if m.address.startswith("broken")][0].address) == 0
    assert stack.metric("fetcher", "deskmail_fetcher_mailbox_errors_total", reason="login") >= 1
    assert "wrong-password-xyzzy" not in stack.log("fetcher")

    # a reply threads back onto its ticket as a comment
    first_raw, first_mid, first_subject = sent[0]
    reply_raw, _ = mails.reply(first_mid, "customer0@customer.test", support, first_subject, "Thanks, it works now.")
    dovecot.append(support, "pw-good", reply_raw)
    target = by_subject[first_subject].key
    wait_for(lambda: len(store.get_ticket(target).thread) == 1, 30, "the reply comment")
    assert len([t for t in _tickets(stack) if t.queue == "SUPPORT"]) == 50
    detail = store.get_ticket(target)
    assert any("Thanks, it works now." in (e.body or "") for e in detail.thread)

    # every message is flagged on the server only after it went through
    flags = dovecot.messages(support, "pw-good")
    assert len(flags) == 51 and all("$Deskmail" in f for _, f in flags)

    # replaying the whole inbound topic through the router creates nothing new
    before = {t.key: t.comment_count for t in _tickets(stack)}
    assert stack.signal("router", signal.SIGTERM) == 0
    replay = stack.cli("replay", "router", "--to-beginning", "--yes", "--config", str(stack.config_path),
                       "--bootstrap", stack.bootstrap)
    assert "total: 53 records to reprocess" in replay.stdout and "moved " in replay.stdout, replay.stdout
    applied_before = stack.metric("ticketer", "deskmail_ticketer_commands_applied_total", outcome="duplicate")
    stack.start("router")
    wait_for(lambda: stack.metric("ticketer", "deskmail_ticketer_commands_applied_total", outcome="duplicate")
             - applied_before >= 53, 60, "the replayed commands to reach the ticketer")
    assert {t.key: t.comment_count for t in _tickets(stack)} == before

    codes = stack.stop()
    assert codes == {"ticketer": 0, "fetcher": 0, "router": 0}, codes


@pytest.mark.postgres
def test_ticketer_killed_mid_batch_ends_with_exactly_500_tickets(setup, dovecot, postgres_url):
    stack, support, _ = setup(db_url=postgres_url)
    raws = [mails.mixed(i, f"c{i}@customer.test", support)[0] for i in range(500)]
    dovecot.append_many(support, "pw-good", raws[:100])
    stack.start("ticketer", "router", "fetcher")
    store = TicketStore(stack.config.database_url)
    wait_for(lambda: store.count_tickets(queue="SUPPORT") >= 60, 90, "the ticketer to be at work")
    # The rest comes while the ticketer works: a polled batch is one transaction, so
    # mail all in the topic at once would be applied in a few commits.
    rest = threading.Thread(target=_append_slowly, args=(dovecot, support, raws[100:]))
    rest.start()
    time.sleep(0.5)
    assert stack.signal("ticketer", signal.SIGKILL) == -signal.SIGKILL
    killed_at = store.count_tickets(queue="SUPPORT")
    rest.join()
    assert killed_at < 500, "the kill must land mid-stream for this test to mean anything"
    stack.start("ticketer")
    wait_for(lambda: store.count_tickets(queue="SUPPORT") == 500, 120, "500 tickets")
    wait_for(lambda: stack.metric("ticketer", "deskmail_bus_consumer_lag_records") == 0, 30, "no lag")
    tickets = [t for t in _tickets(stack) if t.queue == "SUPPORT"]
    assert sorted(int(t.key.split("-")[1]) for t in tickets) == list(range(1, 501))
    assert len({t.summary for t in tickets}) == 500
