"""Several `deskmail run fetcher` replicas share eight IMAP mailboxes through the lease
group while mail keeps arriving: two replicas, then three (clean rebalances), then one
SIGKILLed mid-stream. Every mail becomes exactly one ticket, the killed replica's
mailboxes are taken over, and the record of who held which mailbox when (the
replicas' "mailbox acquired"/"mailbox released" log lines, and the kill time) shows
no overlap: none at all across clean rebalances, and after the kill the survivors
take a mailbox only once the broker can have expired the killed member's session.
"""

from __future__ import annotations

import json
import signal
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from services.fetcher.leases import lease_partition
from services.tickets import TicketStore
from tests.harness import mails
from tests.harness.stack import Stack, wait_for

pytestmark = pytest.mark.e2e

SESSION_MS, HEARTBEAT_MS = 2000, 500
LEASE_PARTITIONS = 16
# The mailboxes' partitions: some in every range whether two or three replicas share the 16.
TARGET_PARTITIONS = (0, 3, 6, 8, 9, 11, 13, 15)
PASSWORD = "pw-failover"
FETCHERS = ("fetcher-a", "fetcher-b", "fetcher-c")


def _mailboxes(unique: Callable[[str], str]) -> list[str]:
    found = []
    for partition in TARGET_PARTITIONS:
        while True:
            address = f"{unique('lease')}@example.com"
            if lease_partition(address, LEASE_PARTITIONS) == partition:
                found.append(address)
                break
    return found


def _config(unique: Callable[[str], str], dovecot: Any, db_url: str, data: Path, boxes: list[str]) -> str:
    topics = {k: unique(f"failover-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter",
                                                   "leases")}
    mailboxes = "".join(
        f"""
              - address: {address}
                accept_external: true
                imap: {{host: {dovecot.host}, port: {dovecot.imaps_port}, security: ssl,
                        cafile: {dovecot.cafile}, password: {{env: FAILOVER_PW}}}}"""
        for address in boxes)
    return textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("failover-group")}
          partitions: 4
          consumer: {{session_timeout_ms: {SESSION_MS}, heartbeat_interval_ms: {HEARTBEAT_MS}}}
          topics: {json.dumps(topics)}
        database: {{url: "{db_url}"}}
        data_dir: {data}
        fetcher:
          poll_interval_seconds: 1
          batch_size: 5
          backoff_initial_seconds: 0.5
          backoff_max_seconds: 2
          timeout_seconds: 10
          lease_partitions: {LEASE_PARTITIONS}
        organization:
          domains: [example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [support]}}
        queues:
          - key: SUPPORT
            access: [group:support]
            mailboxes:""") + mailboxes + "\n"


@dataclass(frozen=True)
class Change:
    at: float  # unix time, from the log line
    replica: str  # the process's name in the stack
    mailbox: str
    kind: str  # acquired | released


def _changes(stack: Stack, name: str) -> list[Change]:
    out = []
    for line in stack.log(name).splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("msg") in ("mailbox acquired", "mailbox released"):
            at = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
            out.append(Change(at, name, entry["mailbox"], entry["msg"].split()[1]))
    return out


def _held(stack: Stack, name: str) -> set[str]:
    held: set[str] = set()
    for change in _changes(stack, name):
        (held.add if change.kind == "acquired" else held.discard)(change.mailbox)
    return held


def _spread(stack: Stack, names: tuple[str, ...], boxes: list[str]) -> bool:
    """Every mailbox held by exactly one of ``names``, and each of them holding some."""
    held = [_held(stack, name) for name in names]
    return all(held) and sorted(b for h in held for b in h) == sorted(boxes)


def _intervals(changes: list[Change], ends: dict[str, float]) -> dict[str, list[tuple[float, float, str]]]:
    """Per mailbox, (from, to, replica) of each holding; an open one ends at ``ends[replica]``."""
    out: dict[str, list[tuple[float, float, str]]] = {}
    opened: dict[tuple[str, str], float] = {}
    for change in sorted(changes, key=lambda c: c.at):
        key = (change.replica, change.mailbox)
        if change.kind == "acquired":
            assert key not in opened, f"{change.replica} acquired {change.mailbox} twice"
            opened[key] = change.at
        else:
            out.setdefault(change.mailbox, []).append((opened.pop(key), change.at, change.replica))
    for (replica, mailbox), start in opened.items():
        out.setdefault(mailbox, []).append((start, ends[replica], replica))
    return out


class Mailer:
    """Appends mail to the mailboxes in turn, about ten a second, until stopped."""

    def __init__(self, dovecot: Any, boxes: list[str]):
        self.dovecot = dovecot
        self.boxes = boxes
        self.subjects: list[str] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="mailer", daemon=True)

    def _run(self) -> None:
        try:
            n = 0
            while not self.stop.is_set():
                box = self.boxes[n % len(self.boxes)]
                raw, _, subject = mails.mixed(n, f"customer{n}@customer.test", box)
                self.dovecot.append(box, PASSWORD, raw)
                self.subjects.append(subject)
                n += 1
                self.stop.wait(0.1)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> list[str]:
        self.stop.set()
        self.thread.join(30)
        assert self.error is None, self.error
        return self.subjects


@pytest.fixture
def stack(tmp_path, dovecot, broker, unique):
    boxes = _mailboxes(unique)
    for address in boxes:
        dovecot.add_user(address, PASSWORD)
    text = _config(unique, dovecot, f"sqlite:///{tmp_path / 'tickets.db'}", tmp_path / "data", boxes)
    made = Stack(text, tmp_path, broker.bootstrap, env={"FAILOVER_PW": PASSWORD})
    made.create_topics()
    made.boxes = boxes  # type: ignore[attr-defined]
    yield made
    made.stop()


def test_replicas_share_the_mailboxes_and_take_over_a_killed_ones(stack, dovecot):
    boxes: list[str] = stack.boxes
    stack.start("ticketer", "router")
    mailer = Mailer(dovecot, boxes)
    mailer.thread.start()

    # two replicas split the mailboxes
    for name in FETCHERS[:2]:
        stack.launch(name, "fetcher")
    for name in FETCHERS[:2]:
        stack.wait_ready(name)
    wait_for(lambda: _spread(stack, FETCHERS[:2], boxes), 30, "two replicas to share the mailboxes")

    # a third joins: a clean rebalance
    stack.launch(FETCHERS[2], "fetcher")
    stack.wait_ready(FETCHERS[2])
    wait_for(lambda: _spread(stack, FETCHERS, boxes), 30, "three replicas to share the mailboxes")
    time.sleep(2)  # mail goes on arriving at all three

    # the replica holding the most mailboxes dies mid-stream
    victim = max(FETCHERS, key=lambda name: len(_held(stack, name)))
    survivors = tuple(name for name in FETCHERS if name != victim)
    orphaned = _held(stack, victim)
    killed_at = time.time()
    assert stack.signal(victim, signal.SIGKILL) == -signal.SIGKILL
    wait_for(lambda: _spread(stack, survivors, boxes), 30, "the survivors to take over")
    time.sleep(2)
    subjects = mailer.finish()

    # every mail is exactly one ticket
    store = TicketStore(stack.config.database_url)
    wait_for(lambda: store.count_tickets() >= len(subjects), 90, f"{len(subjects)} tickets")
    time.sleep(1)
    tickets = store.list_tickets(limit=10_000)
    assert len(tickets) == len(subjects)
    assert sorted(t.summary for t in tickets) == sorted(subjects)
    message_ids = [mid for t in tickets for mid in store.get_ticket(t.key).message_ids]  # type: ignore[union-attr]
    assert len(message_ids) == len(set(message_ids)) == len(subjects)

    # who held which mailbox when: never two at once
    changes = [c for name in FETCHERS for c in _changes(stack, name)]
    now = time.time()
    ends = {name: (killed_at if name == victim else now) for name in FETCHERS}
    for mailbox, held in _intervals(changes, ends).items():
        held.sort()
        for (_, end, before), (start, _, after) in zip(held, held[1:]):
            if before != after:
                assert end < start, f"{mailbox}: {before} held it until {end}, {after} from {start}"
    taken_over = [c for c in changes if c.mailbox in orphaned and c.kind == "acquired" and c.at > killed_at]
    assert {c.mailbox for c in taken_over} == orphaned
    expiry = (SESSION_MS - HEARTBEAT_MS) / 1000  # the broker expires a member this long after its last heartbeat
    for change in taken_over:
        assert killed_at + expiry <= change.at <= killed_at + 20, change

    # the metrics agree: the survivors hold all eight, each its own
    assert sum(stack.metric(name, "deskmail_fetcher_leased_mailboxes") for name in survivors) == len(boxes)
    assert all(stack.metric(name, "deskmail_fetcher_lease_changes_total", change="acquired") > 0
               for name in survivors)
    codes = stack.stop()
    assert all(codes[name] == 0 for name in survivors), codes


def _delivered(stack: Stack, name: str) -> list[tuple[float, str]]:
    out = []
    for line in stack.log(name).splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("msg") == "delivered":
                at = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
                out.append((at.timestamp(), entry["mailbox"]))
    return out


def test_a_frozen_replica_marks_nothing_after_it_thaws_until_it_holds_the_mailbox_again(stack, dovecot):
    """The split-brain guard for real: a replica stopped (SIGSTOP) past its session
    timeout loses its mailboxes to the other; thawed, its workers find their lease
    expired and deliver nothing more until the group assigns them mailboxes again."""
    boxes: list[str] = stack.boxes
    stack.start("ticketer", "router")
    mailer = Mailer(dovecot, boxes)
    mailer.thread.start()
    pair = FETCHERS[:2]
    for name in pair:
        stack.launch(name, "fetcher")
    for name in pair:
        stack.wait_ready(name)
    wait_for(lambda: _spread(stack, pair, boxes), 30, "two replicas to share the mailboxes")

    frozen, other = pair
    held = _held(stack, frozen)
    stack.procs[frozen].send_signal(signal.SIGSTOP)
    frozen_at = time.time()
    try:
        wait_for(lambda: _held(stack, other) == set(boxes), 30, "the other replica to take every mailbox")
        time.sleep(1)
    finally:
        thawed_at = time.time()
        stack.procs[frozen].send_signal(signal.SIGCONT)
    wait_for(lambda: _spread(stack, pair, boxes), 30, "the thawed replica to rejoin")
    time.sleep(1)
    subjects = mailer.finish()

    taken = [c for c in _changes(stack, other) if c.kind == "acquired" and c.at > frozen_at and c.mailbox in held]
    assert {c.mailbox for c in taken} == held
    assert all(c.at >= frozen_at + (SESSION_MS - HEARTBEAT_MS) / 1000 for c in taken), taken
    regained = {c.mailbox: c.at for c in _changes(stack, frozen) if c.kind == "acquired" and c.at > thawed_at}
    for at, mailbox in _delivered(stack, frozen):
        if at > thawed_at:  # after the thaw: only mailboxes it was given again, only after that
            assert mailbox in regained and at > regained[mailbox], (mailbox, at, regained.get(mailbox))
    released = [c for c in _changes(stack, frozen) if c.kind == "released" and c.at > thawed_at]
    assert {c.mailbox for c in released} == held

    store = TicketStore(stack.config.database_url)
    wait_for(lambda: store.count_tickets() >= len(subjects), 90, f"{len(subjects)} tickets")
    time.sleep(1)
    assert sorted(t.summary for t in store.list_tickets(limit=10_000)) == sorted(subjects)
