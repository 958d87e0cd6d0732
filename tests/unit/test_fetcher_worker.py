"""The fetcher worker's decisions, against a fake IMAP session and a fake producer.

The fakes model only what the worker relies on (flags, UIDs, UIDVALIDITY,
capabilities, IDLE responses); the real Dovecot is exercised in
tests/integration/test_fetcher_imap.py.
"""

from __future__ import annotations

import imaplib
import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import CapabilityError, LoginError
from imapclient.imapclient import _parse_untagged_response
from imapclient.response_parser import parse_fetch_response, parse_message_list
from imapclient.util import to_ints
from prometheus_client import REGISTRY

from services.common.blobs import FolderBlobStore
from services.common.bus import Out
from services.common.codec import codec
from services.common.config import FetcherSettings, Imap, Mailbox, MarkSettings, Secret
from services.common.errors import Transient
from services.common.retry import FakeClock
from services.common.runtime import Health
from services.fetcher import imap as imapmod
from services.fetcher.batches import plan_batches
from services.fetcher.imap import SESSION_ERRORS, MailboxError, classify, connect
from services.fetcher.marks import keywords_supported, search_criteria
from services.fetcher.worker import MailboxWorker, announces_new_mail, inbound_record

PASSWORD = "pa55-w0rd-never-logged"
_names = itertools.count(1)


# ---------------------------------------------------------------- fakes


class FakeServer:
    """One account's folders: {folder: {uid: [raw, set(flags)]}}."""

    def __init__(
        self,
        capabilities: Sequence[str] = ("IDLE", "MOVE", "UIDPLUS"),
        permanentflags: tuple[bytes, ...] | None = (b"\\Seen", b"\\Deleted", b"\\*"),
    ):
        self.folders: dict[str, dict[int, list[Any]]] = {"INBOX": {}}
        self.uidvalidity = 1000
        self.next_uid = 1
        self.capabilities = set(capabilities)
        self.permanentflags = permanentflags
        self.calls: list[tuple[str, Any]] = []
        self.idle_responses: list[list[tuple[Any, ...]]] = []
        self.vanish_on_fetch: set[int] = set()
        self.sessions = 0

    def add(self, raw: bytes, flags: Sequence[bytes] = (), folder: str = "INBOX") -> int:
        uid = self.next_uid
        self.next_uid += 1
        self.folders.setdefault(folder, {})[uid] = [raw, set(flags)]
        return uid

    def flags(self, folder: str = "INBOX") -> dict[int, set[bytes]]:
        return {uid: set(msg[1]) for uid, msg in self.folders[folder].items()}

    def renumber(self, keep_flags: bool) -> None:
        """What a server rebuild does: new UIDVALIDITY, new UIDs, flags kept or lost."""
        self.uidvalidity += 1
        old = sorted(self.folders["INBOX"].items())
        self.folders["INBOX"] = {}
        self.next_uid = 1
        for _, (raw, flags) in old:
            self.add(raw, flags if keep_flags else ())


class FakeClient:
    def __init__(self, server: FakeServer):
        self.server = server
        self.selected: str | None = None
        server.sessions += 1

    def _box(self) -> dict[int, list[Any]]:
        assert self.selected is not None, "no folder selected"
        return self.server.folders[self.selected]

    def has_capability(self, capability: str) -> bool:
        return capability in self.server.capabilities

    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, Any]:
        self.server.calls.append(("select", folder))
        if folder not in self.server.folders:
            raise imaplib.IMAP4.error("select failed: Mailbox doesn't exist")
        self.selected = folder
        info: dict[bytes, Any] = {b"UIDVALIDITY": self.server.uidvalidity, b"EXISTS": len(self._box())}
        if self.server.permanentflags is not None:
            info[b"PERMANENTFLAGS"] = self.server.permanentflags
        return info

    def folder_exists(self, folder: str) -> bool:
        return folder in self.server.folders

    def create_folder(self, folder: str) -> None:
        self.server.calls.append(("create", folder))
        self.server.folders[folder] = {}

    def search(self, criteria: Any = "ALL", charset: str | None = None) -> list[int]:
        self.server.calls.append(("search", tuple(criteria)))
        out = []
        for uid, (_, flags) in self._box().items():
            if b"\\Deleted" in flags:
                continue
            if criteria[0] == "UNKEYWORD" and criteria[1].encode() in flags:
                continue
            if criteria[0] == "UNSEEN" and b"\\Seen" in flags:
                continue
            out.append(uid)
        return list(reversed(out))  # servers need not answer in order

    def fetch(self, messages: Sequence[int], data: Sequence[str], modifiers: Any = None) -> dict[int, dict[bytes, Any]]:
        self.server.calls.append(("fetch", (tuple(messages), tuple(data))))
        assert "RFC822" not in data and "BODY[]" not in data, "fetching must never set \\Seen"
        out: dict[int, dict[bytes, Any]] = {}
        for uid in messages:
            if uid not in self._box():
                continue
            raw = self._box()[uid][0]
            item: dict[bytes, Any] = {b"RFC822.SIZE": len(raw)}
            if "BODY.PEEK[]" in data and uid not in self.server.vanish_on_fetch:
                item[b"BODY[]"] = raw
            out[uid] = item
        return out

    def add_flags(self, messages: Sequence[int], flags: Sequence[str | bytes], silent: bool = False) -> None:
        self.server.calls.append(("store", (tuple(messages), tuple(flags))))
        for uid in messages:
            self._box()[uid][1].update(flags)

    def move(self, messages: Sequence[int], folder: str) -> None:
        self.server.calls.append(("move", (tuple(messages), folder)))
        for uid in messages:
            raw, flags = self._box().pop(uid)
            self.server.add(raw, tuple(flags), folder)

    def copy(self, messages: Sequence[int], folder: str) -> None:
        self.server.calls.append(("copy", (tuple(messages), folder)))
        for uid in messages:
            raw, flags = self._box()[uid]
            self.server.add(raw, tuple(flags), folder)

    def uid_expunge(self, messages: Sequence[int]) -> None:
        self.server.calls.append(("uid_expunge", tuple(messages)))
        for uid in messages:
            if b"\\Deleted" in self._box()[uid][1]:
                del self._box()[uid]

    def expunge(self, messages: Sequence[int] | None = None) -> None:
        self.server.calls.append(("expunge", None))
        for uid in [u for u, m in self._box().items() if b"\\Deleted" in m[1]]:
            del self._box()[uid]

    def idle(self) -> None:
        self.server.calls.append(("idle", None))

    def idle_check(self, timeout: float | None = None) -> list[tuple[Any, ...]]:
        if self.server.idle_responses:
            return self.server.idle_responses.pop(0)
        time.sleep(min(timeout or 0.05, 0.05))
        return []

    def idle_done(self) -> None:
        self.server.calls.append(("idle_done", None))

    def logout(self) -> None:
        self.server.calls.append(("logout", None))

    def shutdown(self) -> None:
        self.server.calls.append(("shutdown", None))


class FakeProducer:
    """Records what was acknowledged; ``fail`` makes the next N send_all calls raise Transient."""

    def __init__(self, server: FakeServer | None = None):
        self.server = server
        self.acked: list[Out] = []
        self.batches: list[list[Out]] = []
        self.fail = 0
        self.flags_at_send: list[dict[int, set[bytes]]] = []

    def send_all(self, outs: Sequence[Out], stage: str, timeout: float = 120.0) -> None:
        if self.server is not None:
            self.flags_at_send.append(self.server.flags())
        if self.fail > 0:
            self.fail -= 1
            raise Transient("broker did not acknowledge")
        self.batches.append(list(outs))
        self.acked.extend(outs)


def make_mailbox(security: str = "ssl") -> Mailbox:
    address = f"box{next(_names)}@example.com"
    imap = Imap(host="imap.example.com", port=993, security=security, login=address,  # type: ignore[arg-type]
                password=Secret(PASSWORD, "env:TEST"), folder="INBOX", cafile=None, verify_tls=True)
    return Mailbox(address=address, queue="SUPPORT", accept_external=True, ticket_type=None, components=(),
                   imap=imap, ingress=False, smtp=None, signatures=())


def make_settings(**overrides: Any) -> FetcherSettings:
    values: dict[str, Any] = dict(idle=False, poll_interval_seconds=0.05, batch_size=10,
                                  backoff_initial_seconds=0.01, backoff_max_seconds=0.05, timeout_seconds=5)
    values.update(overrides)
    return FetcherSettings(**values)


def make_worker(
    server: FakeServer,
    tmp_path: Any,
    producer: FakeProducer | None = None,
    settings: FetcherSettings | None = None,
    factory: Callable[[Imap, float], Any] | None = None,
    **kwargs: Any,
) -> tuple[MailboxWorker, FakeProducer, threading.Event]:
    producer = producer or FakeProducer(server)
    stop = threading.Event()
    worker = MailboxWorker(
        make_mailbox(), settings or make_settings(), producer, "t.inbound",  # type: ignore[arg-type]
        FolderBlobStore(tmp_path / "blobs"), stop, Health(),
        client_factory=factory or (lambda imap, timeout: FakeClient(server)), **kwargs,
    )
    return worker, producer, stop


def run_until(worker: MailboxWorker, stop: threading.Event, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in time"
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def decoded(outs: Sequence[Out]) -> list[dict[str, Any]]:
    return [codec("InboundMail").decode(o.value) for o in outs]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def mail(n: int, size: int = 200) -> bytes:
    head = f"Subject: message {n}\r\nMessage-ID: <{n}@example.com>\r\n\r\n".encode()
    return head + b"x" * max(0, size - len(head))


# ---------------------------------------------------------------- pure decisions


def test_search_criteria_per_mode_never_selects_deleted_mail():
    assert search_criteria("keyword", "$Deskmail") == ["UNKEYWORD", "$Deskmail", "NOT", "DELETED"]
    assert search_criteria("seen", "$Deskmail") == ["UNSEEN", "NOT", "DELETED"]
    assert search_criteria("move", "$Deskmail") == ["NOT", "DELETED"]


def test_plan_batches_cuts_by_count_and_by_bytes():
    pairs = [(uid, 10) for uid in range(1, 26)]
    assert [len(b) for b in plan_batches(pairs, 10, 10_000)] == [10, 10, 5]
    assert plan_batches(pairs, 10, 10_000)[0] == list(range(1, 11))
    # byte cap: 30 bytes per batch, and a single oversized message goes alone
    assert plan_batches([(1, 10), (2, 10), (3, 10), (4, 10)], 100, 30) == [[1, 2, 3], [4]]
    assert plan_batches([(1, 10), (2, 500), (3, 10)], 100, 30) == [[1], [2], [3]]
    assert plan_batches([], 10, 30) == []


def test_plan_batches_puts_every_message_above_the_streaming_size_alone():
    pairs = [(1, 10), (2, 10), (3, 90), (4, 10), (5, 91), (6, 92), (7, 10)]
    assert plan_batches(pairs, 100, 1000, alone_above=50) == [[1, 2], [3], [4], [5], [6], [7]]


def test_keywords_supported_reads_permanentflags():
    assert keywords_supported({b"PERMANENTFLAGS": (b"\\Seen", b"\\*")}, "$Deskmail")
    assert keywords_supported({b"PERMANENTFLAGS": (b"\\Seen", b"$deskmail")}, "$Deskmail")
    assert not keywords_supported({b"PERMANENTFLAGS": (b"\\Seen", b"\\Deleted")}, "$Deskmail")
    assert keywords_supported({}, "$Deskmail")  # RFC 3501: absent means all flags are permanent


def test_inbound_record_inline_and_blob(tmp_path):
    from datetime import datetime, timezone

    blobs = FolderBlobStore(tmp_path)
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    small = inbound_record("a@example.com", 7, 3, b"small", now, blobs, inline_max_bytes=10)
    assert small["id"] == "imap:a@example.com:7:3" and small["raw"] == b"small" and small["blob_ref"] is None
    big_raw = b"B" * 11
    big = inbound_record("a@example.com", 7, 4, big_raw, now, blobs, inline_max_bytes=10)
    assert big["raw"] is None and big["size"] == 11
    assert blobs.get(big["blob_ref"]) == big_raw
    assert codec("InboundMail").decode(codec("InboundMail").encode(big))["blob_ref"] == big["blob_ref"]


def test_announces_new_mail():
    assert announces_new_mail([(b"OK", b"Still here"), (5, b"EXISTS")])
    assert announces_new_mail([(1, b"RECENT")])
    assert not announces_new_mail([(b"OK", b"Still here"), (3, b"EXPUNGE"), (2, b"FETCH", (b"FLAGS", ()))])


# ---------------------------------------------------------------- delivery


def test_delivers_in_uid_order_in_batches_and_marks_each_batch_after_its_ack(tmp_path):
    server = FakeServer()
    for n in range(25):
        server.add(mail(n))
    worker, producer, stop = make_worker(server, tmp_path)
    run_until(worker, stop, lambda: len(producer.acked) == 25)

    assert [len(b) for b in producer.batches] == [10, 10, 5]
    records = decoded(producer.acked)
    assert [r["uid"] for r in records] == list(range(1, 26))
    assert all(o.key == worker.address.encode() and o.topic == "t.inbound" for o in producer.acked)
    assert records[0]["id"] == f"imap:{worker.address}:1000:1"
    assert records[0]["raw"] == mail(0) and records[0]["source"] == "imap"
    # at each send, the batch being sent was not marked yet; afterwards all are
    for batch, flags in zip(producer.batches, producer.flags_at_send):
        assert all(b"$Deskmail" not in flags[r["uid"]] for r in decoded(batch))
    assert all(b"$Deskmail" in f for f in server.flags().values())
    fetches = [c[1] for c in server.calls if c[0] == "fetch" and "BODY.PEEK[]" in c[1][1]]
    assert [len(uids) for uids, _ in fetches] == [10, 10, 5]
    assert sample("deskmail_fetcher_messages_total", mailbox=worker.address, source="imap") == 25
    assert sample("deskmail_fetcher_mailbox_up", mailbox=worker.address) == 1


def test_transient_broker_failure_marks_nothing_and_retries_later(tmp_path):
    server = FakeServer()
    for n in range(5):
        server.add(mail(n))
    producer = FakeProducer(server)
    producer.fail = 2
    worker, producer, stop = make_worker(server, tmp_path, producer=producer)
    run_until(worker, stop, lambda: len(producer.acked) == 5)

    # two failed attempts before: at each of them nothing was marked
    assert len(producer.flags_at_send) == 3
    assert all(not f for flags in producer.flags_at_send for f in flags.values())
    assert [r["uid"] for r in decoded(producer.acked)] == [1, 2, 3, 4, 5]
    assert all(b"$Deskmail" in f for f in server.flags().values())
    assert server.sessions == 1  # the broker's trouble is not the mailbox's: same session
    assert sample("deskmail_fetcher_mailbox_errors_total", mailbox=worker.address, reason="connect") == 0


def test_transient_until_stop_leaves_everything_unmarked(tmp_path):
    server = FakeServer()
    server.add(mail(1))
    producer = FakeProducer(server)
    producer.fail = 10**6
    worker, producer, stop = make_worker(server, tmp_path, producer=producer)
    run_until(worker, stop, lambda: len(producer.flags_at_send) >= 3)
    assert producer.acked == []
    assert server.flags() == {1: set()}


def test_large_mail_goes_to_the_blob_store(tmp_path):
    server = FakeServer()
    server.add(mail(1, size=100))
    server.add(mail(2, size=5000))
    worker, producer, stop = make_worker(server, tmp_path, inline_max_bytes=1000)
    run_until(worker, stop, lambda: len(producer.acked) == 2)
    small, big = decoded(producer.acked)
    assert small["raw"] == mail(1, size=100) and small["blob_ref"] is None
    assert big["raw"] is None and big["size"] == 5000
    assert FolderBlobStore(tmp_path / "blobs").get(big["blob_ref"]) == mail(2, size=5000)


def test_batches_are_cut_by_bytes(tmp_path):
    server = FakeServer()
    for n in range(6):
        server.add(mail(n, size=1000))
    worker, producer, stop = make_worker(server, tmp_path, max_batch_bytes=2500)
    run_until(worker, stop, lambda: len(producer.acked) == 6)
    assert [len(b) for b in producer.batches] == [2, 2, 2]


def test_message_vanished_between_search_and_fetch_is_skipped(tmp_path):
    server = FakeServer()
    for n in range(3):
        server.add(mail(n))
    server.vanish_on_fetch = {2}
    worker, producer, stop = make_worker(server, tmp_path)
    run_until(worker, stop, lambda: len(producer.acked) == 2)
    assert [r["uid"] for r in decoded(producer.acked)] == [1, 3]
    assert server.flags()[2] == set()
    assert ("store", ((1, 3), (b"$Deskmail",))) in server.calls


def test_seen_mode_marks_seen_and_skips_seen_mail(tmp_path):
    server = FakeServer()
    server.add(mail(1), flags=[b"\\Seen"])
    server.add(mail(2))
    worker, producer, stop = make_worker(server, tmp_path, settings=make_settings(mark=MarkSettings(mode="seen")))
    run_until(worker, stop, lambda: len(producer.acked) == 1)
    assert decoded(producer.acked)[0]["uid"] == 2
    assert server.flags()[2] == {b"\\Seen"}


@pytest.mark.parametrize("capabilities", [("MOVE",), ("UIDPLUS",), ()])
def test_move_mode_creates_the_folder_and_moves(tmp_path, capabilities):
    server = FakeServer(capabilities=capabilities)
    server.add(mail(1))
    server.add(mail(2))
    settings = make_settings(mark=MarkSettings(mode="move", folder="Done"))
    worker, producer, stop = make_worker(server, tmp_path, settings=settings)
    run_until(worker, stop, lambda: len(producer.acked) == 2 and not server.folders["INBOX"])
    assert ("create", "Done") in server.calls
    assert len(server.folders["Done"]) == 2
    names = [c[0] for c in server.calls]
    if "MOVE" in capabilities:
        assert "move" in names and "copy" not in names
    else:
        assert "copy" in names and ("uid_expunge" in names) == ("UIDPLUS" in capabilities)


def test_keyword_mode_falls_back_to_seen_without_permanent_keywords(tmp_path, caplog):
    server = FakeServer(permanentflags=(b"\\Seen", b"\\Deleted"))
    server.add(mail(1), flags=[b"\\Seen"])
    server.add(mail(2))
    worker, producer, stop = make_worker(server, tmp_path)
    with caplog.at_level(logging.WARNING, logger="deskmail.fetcher"):
        run_until(worker, stop, lambda: len(producer.acked) == 1)
    assert decoded(producer.acked)[0]["uid"] == 2
    assert server.flags()[2] == {b"\\Seen"}
    assert [c[1] for c in server.calls if c[0] == "search"][0] == ("UNSEEN", "NOT", "DELETED")
    warnings = [r for r in caplog.records if "keywords" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].mailbox == worker.address


@pytest.mark.parametrize("keep_flags", [True, False])
def test_uidvalidity_change_is_counted_and_the_folder_rescanned(tmp_path, keep_flags):
    server = FakeServer()
    for n in range(3):
        server.add(mail(n))
    worker, producer, stop = make_worker(server, tmp_path)
    client = FakeClient(server)
    worker._cycle(client)
    assert len(producer.acked) == 3 and worker.uidvalidity == 1000

    server.renumber(keep_flags=keep_flags)
    worker._cycle(client)
    assert worker.uidvalidity == 1001
    assert sample("deskmail_fetcher_uidvalidity_changes_total", mailbox=worker.address) == 1
    again = decoded(producer.acked[3:])
    if keep_flags:
        assert again == []  # flags survived: nothing re-read
    else:
        # flags lost: re-read under new ids (the ticketer dedupes by Message-ID)
        assert [r["id"] for r in again] == [f"imap:{worker.address}:1001:{uid}" for uid in (1, 2, 3)]
    worker._cycle(client)
    assert sample("deskmail_fetcher_uidvalidity_changes_total", mailbox=worker.address) == 1


def test_idle_wakes_on_exists_and_fetches_again(tmp_path):
    server = FakeServer()
    server.add(mail(1))
    worker, producer, stop = make_worker(server, tmp_path, settings=make_settings(idle=True, idle_seconds=60))

    def arrive_later() -> None:
        deadline = time.monotonic() + 5
        while len(producer.acked) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.add(mail(2))
        server.idle_responses.append([(2, b"EXISTS")])

    threading.Thread(target=arrive_later, daemon=True).start()
    run_until(worker, stop, lambda: len(producer.acked) == 2)
    assert [c[0] for c in server.calls].count("idle") >= 2
    assert ("idle_done", None) in server.calls


def test_stop_during_idle_returns_quickly_and_logs_out(tmp_path):
    server = FakeServer()
    worker, producer, stop = make_worker(server, tmp_path, settings=make_settings(idle=True, idle_seconds=600))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while ("idle", None) not in server.calls:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    stop.set()
    thread.join(3)
    assert not thread.is_alive() and time.monotonic() - started < 1.5
    assert server.calls[-2:] == [("idle_done", None), ("logout", None)]


def test_bye_during_idle_reconnects(tmp_path):
    server = FakeServer()
    server.idle_responses.append([(b"BYE", b"Server shutting down.")])
    worker, producer, stop = make_worker(server, tmp_path, settings=make_settings(idle=True, idle_seconds=600))
    run_until(worker, stop, lambda: server.sessions >= 2)
    assert sample("deskmail_fetcher_mailbox_errors_total", mailbox=worker.address, reason="connect") >= 1


# ---------------------------------------------------------------- errors


def test_login_failure_is_counted_backs_off_and_never_logs_the_password(tmp_path, caplog):
    server = FakeServer()
    attempts: list[float] = []

    def refuse(imap: Imap, timeout: float) -> Any:
        attempts.append(time.monotonic())
        raise MailboxError("login", f"login rejected ({imap.host}:{imap.port}): [AUTHENTICATIONFAILED] failed")

    worker, producer, stop = make_worker(server, tmp_path, factory=refuse)
    with caplog.at_level(logging.DEBUG):
        run_until(worker, stop, lambda: len(attempts) >= 3)
    assert sample("deskmail_fetcher_mailbox_errors_total", mailbox=worker.address, reason="login") >= 2
    assert sample("deskmail_fetcher_mailbox_up", mailbox=worker.address) == 0
    assert PASSWORD not in caplog.text
    failures = [r for r in caplog.records if r.getMessage() == "mailbox session failed"]
    assert failures and failures[0].reason == "login" and failures[0].mailbox == worker.address


def test_a_session_error_reconnects_and_mail_stays_unmarked_until_delivered(tmp_path):
    server = FakeServer()
    server.add(mail(1))
    broken = {"left": 1}

    class Flaky(FakeClient):
        def search(self, criteria: Any = "ALL", charset: str | None = None) -> list[int]:
            if broken["left"]:
                broken["left"] -= 1
                raise imaplib.IMAP4.abort("socket error: EOF")
            return super().search(criteria, charset)

    worker, producer, stop = make_worker(server, tmp_path, factory=lambda imap, timeout: Flaky(server))
    run_until(worker, stop, lambda: len(producer.acked) == 1)
    assert server.sessions == 2
    assert sample("deskmail_fetcher_mailbox_errors_total", mailbox=worker.address, reason="connect") == 1
    assert sample("deskmail_fetcher_mailbox_up", mailbox=worker.address) == 1


# Malformed server replies, as imapclient's own parsers fail on them (not a made-up
# exception of the same type): each must end only the session, as reason "protocol".
MALFORMED_REPLIES = {
    "SEARCH reply that is no list of numbers": lambda: parse_message_list([b"none"]),
    "SEARCH reply with a broken tail": lambda: parse_message_list([b"1 2 (oops"]),
    "SEARCH reply with 8-bit bytes": lambda: parse_message_list([b"\xff\xfe"]),
    "SEARCH reply in two parts": lambda: parse_message_list([b"1", b"2"]),
    "SELECT with a non-numeric UIDVALIDITY": lambda: IMAPClient._process_select_response(
        None, {b"UIDVALIDITY": [b"many"]}),
    "SELECT with an empty EXISTS": lambda: IMAPClient._process_select_response(None, {b"EXISTS": [None]}),
    "FETCH with a non-numeric UID": lambda: parse_fetch_response([b"1 (UID x)"]),
    "FETCH with a missing literal": lambda: parse_fetch_response([b"1 (UID 5 BODY[] {10}"]),
    "IDLE line that is no untagged response": lambda: _parse_untagged_response(b"garbage"),
}


def _bad_arguments() -> None:
    to_ints(["not a uid"])  # imapclient rejecting what we passed it: our bug, not the server's


class OurBug(Exception):
    pass


# Exceptions that are not the server's doing: they must leave the guard unchanged.
PROGRAMMING_ERRORS = {
    "TypeError": lambda: len(None),  # type: ignore[arg-type]
    "AttributeError": lambda: None.uid,  # type: ignore[attr-defined]
    "NameError": lambda: undefined_name,  # type: ignore[name-defined]  # noqa: F821
    "KeyError": lambda: {}[b"UIDVALIDITY"],
    "ValueError of our own": lambda: int("x"),
    "ValueError from imapclient over our arguments": _bad_arguments,
    "any other exception": lambda: (_ for _ in ()).throw(OurBug("boom")),
}


class Raising:
    """A client whose every call runs ``failure``."""

    def __init__(self, failure: Callable[[], Any]):
        self.failure = failure

    def search(self, *args: Any, **kwargs: Any) -> Any:
        return self.failure()


@pytest.mark.parametrize("failure", MALFORMED_REPLIES.values(), ids=MALFORMED_REPLIES.keys())
def test_a_malformed_reply_ends_the_session_as_reason_protocol(failure):
    with pytest.raises(SESSION_ERRORS) as caught:
        imapmod.guarded(Raising(failure)).search(["ALL"])  # type: ignore[arg-type]
    assert classify(caught.value).reason == "protocol"


@pytest.mark.parametrize("failure", PROGRAMMING_ERRORS.values(), ids=PROGRAMMING_ERRORS.keys())
def test_a_programming_error_passes_the_guard_unchanged(failure):
    with pytest.raises(Exception) as expected:
        failure()
    with pytest.raises(type(expected.value)) as caught:
        imapmod.guarded(Raising(failure)).search(["ALL"])  # type: ignore[arg-type]
    assert not isinstance(caught.value, MailboxError)
    assert not imapmod.malformed_reply(caught.value)


def test_a_malformed_reply_reconnects_and_the_mail_is_delivered(tmp_path):
    server = FakeServer()
    server.add(mail(1))
    broken = {"left": 1}

    class Garbled(FakeClient):
        def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, Any]:
            if broken["left"]:
                broken["left"] -= 1
                return IMAPClient._process_select_response(None, {b"EXISTS": [b"1"], b"UIDVALIDITY": [b"x1"]})
            return super().select_folder(folder, readonly)

    worker, producer, stop = make_worker(server, tmp_path, factory=lambda imap, timeout: Garbled(server))
    run_until(worker, stop, lambda: len(producer.acked) == 1)
    assert server.sessions == 2
    assert sample("deskmail_fetcher_mailbox_errors_total", mailbox=worker.address, reason="protocol") == 1


@pytest.mark.parametrize("failure", [PROGRAMMING_ERRORS["AttributeError"], PROGRAMMING_ERRORS["TypeError"]],
                         ids=["AttributeError", "TypeError"])
def test_a_programming_error_in_a_client_call_stops_the_worker(tmp_path, failure):
    server = FakeServer()
    server.add(mail(1))

    class Buggy(FakeClient):
        def search(self, criteria: Any = "ALL", charset: str | None = None) -> list[int]:
            return failure()  # type: ignore[no-any-return]

    worker, producer, stop = make_worker(server, tmp_path, factory=lambda imap, timeout: Buggy(server))
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # what the fetcher runner records before it exits non-zero
            crashed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    stop.set()  # only matters if the worker wrongly kept reconnecting
    thread.join(5)
    assert len(crashed) == 1 and not isinstance(crashed[0], MailboxError), crashed
    assert server.sessions == 1  # no reconnect
    assert producer.acked == [] and server.flags() == {1: set()}
    assert sample("deskmail_fetcher_mailbox_errors_total", mailbox=worker.address, reason="protocol") == 0


def test_missing_folder_is_reason_select(tmp_path):
    server = FakeServer()
    del server.folders["INBOX"]
    worker, producer, stop = make_worker(server, tmp_path)
    run_until(worker, stop, lambda: sample("deskmail_fetcher_mailbox_errors_total",
                                           mailbox=worker.address, reason="select") >= 1)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (socket.gaierror(-2, "Name or service not known"), "dns"),
        (ConnectionRefusedError(111, "Connection refused"), "connect"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "tls"),
        (ssl.SSLError(1, "wrong version number"), "tls"),
        (socket.timeout("timed out"), "timeout"),
        (TimeoutError("timed out"), "timeout"),
        (LoginError("[AUTHENTICATIONFAILED] Authentication failed."), "login"),
        (imaplib.IMAP4.readonly("INBOX is not writable"), "select"),
        (imaplib.IMAP4.abort("socket error: EOF"), "connect"),
        (imaplib.IMAP4.abort("unexpected response: '* FOO'"), "protocol"),
        (imaplib.IMAP4.error("UID SEARCH command error: BAD ['Error in IMAP command']"), "protocol"),
        (MailboxError("select", "x"), "select"),
    ],
)
def test_reason_mapping(exc, reason):
    error = classify(exc, "imap.example.com:993")
    assert error.reason == reason and error.reason in imapmod.REASONS
    assert error.message


class ScriptedClient:
    """Stands in for IMAPClient inside connect(): records calls, fails where told."""

    def __init__(self, fail_at: str | None, exc: BaseException | None, calls: list[tuple[str, Any]],
                 host: str, port: int, ssl: bool, timeout: float, ssl_context: Any = None):
        self.fail_at, self.exc, self.calls = fail_at, exc, calls
        calls.append(("init", dict(host=host, port=port, ssl=ssl, context=ssl_context, timeout=timeout)))
        self._maybe_fail("init")

    def _maybe_fail(self, step: str) -> None:
        if self.fail_at == step:
            assert self.exc is not None
            raise self.exc

    def starttls(self, context: Any) -> None:
        self.calls.append(("starttls", context))
        self._maybe_fail("starttls")

    def login(self, user: str, password: str) -> None:
        self.calls.append(("login", user))
        self._maybe_fail("login")

    def shutdown(self) -> None:
        self.calls.append(("shutdown", None))


def scripted(fail_at: str | None = None, exc: BaseException | None = None) -> tuple[Any, list[tuple[str, Any]]]:
    calls: list[tuple[str, Any]] = []

    def build(host: str, port: int, ssl: bool, timeout: float, ssl_context: Any = None) -> ScriptedClient:
        return ScriptedClient(fail_at, exc, calls, host, port, ssl, timeout, ssl_context)

    return build, calls


def test_connect_turns_off_imaplibs_debug_output_before_login():
    build, calls = scripted()

    class Inner:
        debug = 5  # what imapclient sets

    def with_inner(*args: Any, **kwargs: Any) -> ScriptedClient:
        client = build(*args, **kwargs)
        client._imap = Inner()  # type: ignore[attr-defined]
        return client

    client = connect(make_mailbox("ssl").imap, 7.0, client_class=with_inner)
    assert client._imap.debug == 0  # type: ignore[attr-defined]
    assert calls[-1][0] == "login"


@pytest.mark.parametrize("security", ["ssl", "starttls", "none"])
def test_connect_uses_tls_as_configured_and_logs_in(security):
    build, calls = scripted()
    mailbox = make_mailbox(security)
    connect(mailbox.imap, 7.0, client_class=build)
    init = calls[0][1]
    assert init["ssl"] == (security == "ssl") and init["timeout"] == 7.0
    assert (("starttls" in [c[0] for c in calls])) == (security == "starttls")
    context = init["context"] if security == "ssl" else dict(calls).get("starttls")
    if security != "none":
        assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert calls[-1] == ("login", mailbox.address)


@pytest.mark.parametrize(
    ("fail_at", "exc", "reason"),
    [
        ("init", socket.gaierror(-2, "Name or service not known"), "dns"),
        ("init", ConnectionRefusedError(111, "Connection refused"), "connect"),
        ("init", ssl.SSLCertVerificationError(1, "certificate verify failed"), "tls"),
        ("starttls", CapabilityError("Server does not support STARTTLS"), "tls"),
        ("login", LoginError(f"[AUTHENTICATIONFAILED] bad password {PASSWORD}"), "login"),
        ("login", imaplib.IMAP4.error("LOGIN command error: BAD"), "login"),
    ],
)
def test_connect_failures_map_to_reasons_without_the_password(fail_at, exc, reason):
    build, calls = scripted(fail_at, exc)
    mailbox = make_mailbox("starttls" if fail_at == "starttls" else "ssl")
    with pytest.raises(MailboxError) as caught:
        connect(mailbox.imap, 5.0, client_class=build)
    assert caught.value.reason == reason
    assert PASSWORD not in str(caught.value) and PASSWORD not in caught.value.message
    if fail_at != "init":
        assert calls[-1] == ("shutdown", None)


def test_a_programming_error_while_connecting_propagates():
    build, calls = scripted("login", KeyError("password"))
    with pytest.raises(KeyError):
        connect(make_mailbox("ssl").imap, 5.0, client_class=build)
    assert calls[-1] == ("shutdown", None)


def test_connect_without_verification_when_asked():
    build, calls = scripted()
    mailbox = make_mailbox("ssl")
    imap = Imap(**{**mailbox.imap.__dict__, "verify_tls": False})
    connect(imap, 5.0, client_class=build)
    context = calls[0][1]["context"]
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname


def test_missing_ca_file_is_reason_tls(tmp_path):
    build, calls = scripted()
    imap = Imap(**{**make_mailbox("ssl").imap.__dict__, "cafile": str(tmp_path / "missing.pem")})
    with pytest.raises(MailboxError) as caught:
        connect(imap, 5.0, client_class=build)
    assert caught.value.reason == "tls" and "missing.pem" in caught.value.message
    assert calls == []


def test_connect_to_a_closed_port_is_reason_connect():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    imap = Imap(host="127.0.0.1", port=port, security="none", login="x", password=Secret(PASSWORD, "env:X"),
                folder="INBOX", cafile=None, verify_tls=True)
    with pytest.raises(MailboxError) as caught:
        connect(imap, 2.0)
    assert caught.value.reason == "connect"


def test_a_failing_server_is_retried_on_the_one_backoff_policy_and_a_success_resets_it(tmp_path: Any) -> None:
    """The worker's waits run on the injected clock: exponential, capped, and reset by
    a session that works; a stop during a wait ends the worker at once."""
    server = FakeServer()
    attempts: list[float] = []
    clock = FakeClock()

    def factory(imap: Imap, timeout: float) -> Any:
        attempts.append(clock.now)
        if len(attempts) <= 4:
            raise ConnectionRefusedError(111, "Connection refused")
        return FakeClient(server)

    settings = make_settings(backoff_initial_seconds=2, backoff_max_seconds=8)
    worker, producer, stop = make_worker(server, tmp_path, settings=settings, factory=factory, clock=clock)
    server.add(mail(0))
    run_until(worker, stop, lambda: len(producer.acked) == 1)
    gaps = [b - a for a, b in zip(attempts, attempts[1:5])]
    # 2, 4, 8, then capped at 8 s, each jittered down to half at most
    for gap, ceiling in zip(gaps, [2, 4, 8, 8]):
        assert ceiling / 2 <= gap <= ceiling
    assert max(clock.waits) <= 1.0  # slept in slices: the liveness probe stays fed
    assert worker.session_retry.attempts == 0  # the session that worked reset it


# ---------------------------------------------------------------- leases


class SwitchLease:
    """A lease the test turns on and off."""

    def __init__(self, valid: bool):
        self.ok = valid

    def valid(self) -> bool:
        return self.ok


KEYWORD_FLAG = b"$Deskmail"


def test_nothing_is_fetched_or_marked_while_the_lease_is_not_valid(tmp_path):
    server = FakeServer()
    for n in range(3):
        server.add(mail(n))
    lease = SwitchLease(False)
    worker, producer, stop = make_worker(server, tmp_path, lease=lease)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    time.sleep(0.3)
    assert server.sessions == 0 and producer.acked == []  # not even connected

    lease.ok = True
    deadline = time.monotonic() + 5
    while len(producer.acked) < 3:
        assert time.monotonic() < deadline, "no delivery once the lease was valid"
        time.sleep(0.01)
    stop.set()
    thread.join(5)
    assert all(KEYWORD_FLAG in flags for flags in server.flags().values())


def test_a_lease_that_ends_while_the_batch_is_produced_leaves_it_unmarked(tmp_path):
    server = FakeServer()
    for n in range(3):
        server.add(mail(n))
    lease = SwitchLease(True)

    class EndsLease(FakeProducer):
        def send_all(self, outs: Sequence[Out], stage: str, timeout: float = 120.0) -> None:
            super().send_all(outs, stage, timeout)
            lease.ok = False  # the replica could not confirm its membership meanwhile

    worker, producer, stop = make_worker(server, tmp_path, producer=EndsLease(server), lease=lease)
    run_until(worker, stop, lambda: len(producer.acked) == 3 and ("logout", None) in server.calls)
    assert all(flags == set() for flags in server.flags().values()), "marked after the lease ended"
    assert not [c for c in server.calls if c[0] == "store"]
    assert ("logout", None) in server.calls  # the session itself was sound: closed cleanly


def test_idle_ends_when_the_lease_does(tmp_path):
    server = FakeServer()
    lease = SwitchLease(True)
    worker, producer, stop = make_worker(server, tmp_path, settings=make_settings(idle=True, idle_seconds=60),
                                         lease=lease)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while ("idle", None) not in server.calls:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    lease.ok = False
    while ("logout", None) not in server.calls:
        assert time.monotonic() < deadline, "IDLE went on after the lease ended"
        time.sleep(0.01)
    assert ("idle_done", None) in server.calls
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_arrival_is_the_servers_internaldate_in_utc():
    from datetime import datetime, timedelta, timezone

    from services.fetcher.worker import arrival

    fetched = datetime(2026, 12, 4, 12, 0, 0, 400_000, tzinfo=timezone.utc)
    aware = datetime(2026, 12, 4, 13, 30, tzinfo=timezone(timedelta(hours=3)))
    # the end of INTERNALDATE's second: a mail arriving just after a reply sorts after it
    assert arrival(aware, fetched) == datetime(2026, 12, 4, 10, 30, 0, 999_999, tzinfo=timezone.utc)
    naive_local = datetime(2026, 12, 4, 9, 15)  # imapclient's normalised local time
    assert arrival(naive_local, fetched) == naive_local.astimezone(timezone.utc).replace(microsecond=999_999)
    # never after it was fetched (the same second, or a server clock ahead)
    assert arrival(datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc), fetched) == fetched
    assert arrival(datetime(2026, 12, 4, 12, 5, tzinfo=timezone.utc), fetched) == fetched
    assert arrival(None, fetched) == fetched and arrival(b"garbage", fetched) == fetched
