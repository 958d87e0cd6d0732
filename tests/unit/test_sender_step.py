"""The sender step's decisions with a scripted SMTP pool and a fake clock (no I/O)."""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from services.common.bus import Out
from services.common.codec import codec
from services.common.config import Config, Smtp, parse_text
from services.common.errors import BadRecord, Later
from services.common.retry import FakeClock
from services.common.runtime import Health
from services.common.smtp import SendResult
from services.common.smtp_failures import PermanentFailure, TemporaryFailure
from services.sender.runner import SenderStep


def config(allow_outbound: bool = True, smtp: bool = True) -> Config:
    smtp_block = textwrap.indent(textwrap.dedent("""\
        smtp:
          host: smtp.example.com
          port: 587
          security: starttls
        signatures:
          - {alias: Example support}
        """), " " * 8) if smtp else ""
    return parse_text(textwrap.dedent("""\
        sender: {retry_initial_seconds: 1, retry_max_seconds: 8, give_up_after_seconds: 30, timeout_seconds: 2}
        organization:
          domains: [example.com]
          members:
            - {email: alice@example.com}
        queues:
          - key: SUPPORT
            allow_outbound_mail: %s
            mailboxes:
              - address: support@example.com
                ingress: true
        """) % ("true" if allow_outbound else "false") + smtp_block)


def stop_after(clock: FakeClock, seconds: float | None) -> threading.Event:
    """A stop event that is set once the sender has waited ``seconds`` in all."""
    stop = threading.Event()

    def on_wait(_: float) -> None:
        if seconds is not None and sum(clock.waits) >= seconds:
            stop.set()

    clock.on_wait = on_wait
    return stop


class Pool:
    def __init__(self, script: Sequence[Any], clock: FakeClock, cost: float = 0.5):
        self.script = list(script)
        self.clock = clock
        self.cost = cost
        self.calls: list[tuple[Smtp, str, list[str], bytes]] = []

    def send(self, smtp: Smtp, envelope_from: str, recipients: Sequence[str], message: bytes,
             *, smtputf8: bool = False) -> SendResult:
        self.calls.append((smtp, envelope_from, list(recipients), message))
        self.clock.now += self.cost
        outcome = self.script.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome  # type: ignore[no-any-return]


class Producer:
    def __init__(self) -> None:
        self.sent: list[Out] = []

    def send_all(self, outs: Sequence[Out], stage: str, timeout: float = 120.0) -> None:
        self.sent.extend(outs)


def record(**overrides: Any) -> SimpleNamespace:
    mail: dict[str, Any] = {
        "id": "out-1", "kind": "reply", "ticket": "SUPPORT-12", "comment_id": 3, "queue": "SUPPORT",
        "mailbox": "support@example.com", "from_address": "support@example.com", "alias": "Example support",
        "signature": None, "to": [{"email": "carol@customer.test", "name": "Carol"}], "cc": [],
        "subject": "Re: [SUPPORT-12] Invoice", "text": "Here it is.", "html": None,
        "message_id": "deskmail.out-1@example.com", "in_reply_to": None, "references": [], "attachments": [],
        "created_at": datetime(2025, 11, 29, tzinfo=timezone.utc),
    }
    mail.update(overrides)
    return SimpleNamespace(topic="outbound", partition=0, offset=7, key=b"SUPPORT-12",
                           value=codec("OutboundMail").encode(mail))


def events(outs: Sequence[Out]) -> list[dict[str, Any]]:
    return [codec("DeliveryEvent").decode(o.value) for o in outs]


def make(script: Sequence[Any], cfg: Config | None = None, stop_after_seconds: float | None = None
         ) -> tuple[SenderStep, Pool, Producer, FakeClock]:
    clock = FakeClock()
    stop = stop_after(clock, stop_after_seconds)
    pool = Pool(script, clock)
    producer = Producer()
    step = SenderStep(cfg or config(), producer, pool, blobs=None, stop=stop, health=Health(),  # type: ignore[arg-type]
                      clock=clock)
    return step, pool, producer, clock


def test_sent_at_the_first_attempt() -> None:
    step, pool, producer, _ = make([SendResult(250, "2.0.0 Ok: queued")])
    outs = step.process(record())
    assert producer.sent == []
    [event] = events(outs)
    assert outs[0].key == b"SUPPORT-12" and outs[0].topic == step.topic
    assert {k: event[k] for k in ("id", "outbound_id", "ticket", "comment_id", "status", "attempt", "smtp_code",
                                  "smtp_reply", "message_id")} == {
        "id": "out-1:1:sent", "outbound_id": "out-1", "ticket": "SUPPORT-12", "comment_id": 3, "status": "sent",
        "attempt": 1, "smtp_code": 250, "smtp_reply": "2.0.0 Ok: queued", "message_id": "deskmail.out-1@example.com",
    }
    smtp, envelope_from, rcpts, data = pool.calls[0]
    assert (smtp.host, envelope_from, rcpts) == ("smtp.example.com", "support@example.com", ["carol@customer.test"])
    assert b"Message-ID: <deskmail.out-1@example.com>" in data


def drive(step: SenderStep, rec: Any, clock: FakeClock) -> tuple[list[Out], list[Out], list[float]]:
    """Process ``rec`` as the consume loop does: after each ``Later`` its partition
    waits the delay (the fake clock advances) and the record comes again.
    Returns (final outs, retrying outs, delays)."""
    retrying: list[Out] = []
    delays: list[float] = []
    while True:
        try:
            return list(step.process(rec)), retrying, delays
        except Later as later:
            retrying.extend(later.outs)
            delays.append(later.delay)
            clock.advance(later.delay)


def test_temporary_failures_are_retried_with_a_retrying_event_each_then_sent() -> None:
    refused = TemporaryFailure("connect", "connect", "cannot connect to smtp.example.com:587: connection refused")
    step, pool, producer, clock = make([refused, refused, SendResult(250, "ok")])
    outs, retrying_outs, delays = drive(step, record(), clock)
    retrying = events(retrying_outs)
    assert [(e["id"], e["status"], e["smtp_code"], e["smtp_reply"]) for e in retrying] == [
        ("out-1:1:retrying", "retrying", None, refused.reply),
        ("out-1:2:retrying", "retrying", None, refused.reply),
    ]
    assert [(e["id"], e["attempt"]) for e in events(outs)] == [("out-1:3:sent", 3)]
    assert len(pool.calls) == 3 and producer.sent == [] and clock.waits == []  # nothing sleeps in place
    assert 0.5 <= sum(delays) <= 3  # backoff 1 s then 2 s, with jitter down to half


def test_a_waiting_mail_does_not_hold_up_mail_of_other_partitions() -> None:
    greylisted = TemporaryFailure("recipients", "send", "smtp.example.com refused every recipient: 451", 451)
    step, pool, _, clock = make([greylisted, SendResult(250, "ok"), SendResult(250, "ok")])
    waiting = record()
    with pytest.raises(Later):
        step.process(waiting)
    other = record(id="out-2")
    other.partition, other.offset = 1, 3
    [event] = events(step.process(other))  # a recipient's 4xx: the server is not down, no delay for others
    assert (event["id"], event["status"]) == ("out-2:1:sent", "sent")
    clock.advance(2)
    [event] = events(step.process(waiting))
    assert (event["id"], event["attempt"]) == ("out-1:2:sent", 2)


def test_an_unreachable_server_makes_the_other_mails_wait_without_trying() -> None:
    down = TemporaryFailure("connect", "connect", "cannot connect to smtp.example.com:587: connection refused")
    step, pool, _, clock = make([down, SendResult(250, "ok"), SendResult(250, "ok")])
    with pytest.raises(Later):
        step.process(record())
    other = record(id="out-2")
    other.partition = 1
    with pytest.raises(Later, match="is down") as later:
        step.process(other)
    assert later.value.outs == () and len(pool.calls) == 1  # no timeout spent, no attempt counted
    clock.advance(later.value.delay)
    [event] = events(step.process(other))
    assert (event["id"], event["attempt"]) == ("out-2:1:sent", 1)


def test_temporary_failures_give_up_after_the_window() -> None:
    greylisted = TemporaryFailure("recipients", "send", "smtp.example.com refused every recipient: 451", 451)
    step, pool, producer, clock = make([greylisted] * 50)
    started = clock.now
    outs, retrying, delays = drive(step, record(), clock)
    [event] = events(outs)
    assert event["status"] == "failed" and event["smtp_code"] == 451
    assert event["smtp_reply"].startswith(f"gave up after {event['attempt']} attempt(s) in ")
    assert event["smtp_reply"].endswith(greylisted.reply)
    assert clock.now - started <= 30  # the last attempt still ends inside give_up_after_seconds
    assert clock.now - started + 8 + 2 > 30  # and no further one would have
    assert len(retrying) == event["attempt"] - 1 == len(pool.calls) - 1
    assert step.attempts == {}  # a final outcome forgets the attempts


def test_permanent_failure_fails_at_once() -> None:
    refused = PermanentFailure("recipients", "send", "smtp.example.com refused every recipient: <x> 550 5.1.1", 550)
    step, pool, producer, _ = make([refused])
    [event] = events(step.process(record()))
    assert (event["id"], event["status"], event["smtp_code"], event["smtp_reply"]) == \
        ("out-1:1:failed", "failed", 550, refused.reply)
    assert producer.sent == [] and len(pool.calls) == 1


def test_another_record_at_the_same_partition_starts_from_attempt_one() -> None:
    """After a rebalance or restart the waiting record may come back at another
    offset's turn; attempts are kept only for the record the partition waits at."""
    down = TemporaryFailure("recipients", "send", "451 later", 451)
    step, pool, _, clock = make([down, SendResult(250, "ok")])
    with pytest.raises(Later):
        step.process(record())
    nxt = record(id="out-2")
    nxt.offset = 8
    [event] = events(step.process(nxt))
    assert event["attempt"] == 1


def test_no_smtp_settings_or_unknown_mailbox_is_a_failed_event_not_a_crash() -> None:
    step, pool, _, _ = make([], cfg=config(smtp=False))
    [event] = events(step.process(record()))
    assert event["status"] == "failed"
    assert event["smtp_reply"] == "mailbox support@example.com has no outgoing mail (smtp:) settings"
    [event] = events(step.process(record(mailbox="nobody@example.com")))
    assert event["smtp_reply"] == "mailbox nobody@example.com is not configured"
    assert pool.calls == []


def test_outbound_mail_switch_off_blocks_non_members_and_sends_nothing() -> None:
    step, pool, _, _ = make([SendResult(250, "ok")], cfg=config(allow_outbound=False))
    [event] = events(step.process(record(cc=[{"email": "Alice@example.com", "name": None}])))
    assert event["status"] == "failed"
    assert event["smtp_reply"] == ("queue SUPPORT does not allow sending mail outside the organization; "
                                   "not members: carol@customer.test")
    assert pool.calls == []
    [event] = events(step.process(record(to=[{"email": "alice@example.com", "name": "Alice"}])))
    assert event["status"] == "sent"




def test_test_mail_events_are_keyed_by_the_outbound_id() -> None:
    step, _, _, _ = make([SendResult(250, "ok")])
    [out] = step.process(record(kind="test", ticket=None, comment_id=None))
    assert out.key == b"out-1"
    assert events([out])[0]["ticket"] is None


def test_undecodable_record_is_a_bad_record() -> None:
    step, _, _, _ = make([])
    with pytest.raises(BadRecord):
        step.process(SimpleNamespace(topic="outbound", partition=0, offset=1, key=b"", value=b"not avro"))


def test_missing_attachment_blob_is_a_failed_event() -> None:
    class NoBlobs:
        def get(self, ref: str) -> bytes:
            from services.common.blobs import BlobMissing
            raise BlobMissing(f"blob {ref} is not in /nowhere")

    step, pool, _, _ = make([])
    step.blobs = NoBlobs()  # type: ignore[assignment]
    attachment = {"filename": "a.pdf", "content_type": "application/pdf", "blob_ref": "sha256:" + "0" * 64}
    [event] = events(step.process(record(attachments=[attachment])))
    assert event["status"] == "failed" and "is not in /nowhere" in event["smtp_reply"]
    assert pool.calls == []


# ---------------------------------------------------------------- one crafted mail


def test_a_raw_non_ascii_reference_fails_that_mail_and_the_next_is_sent() -> None:
    step, pool, _, _ = make([SendResult(250, "ok")])
    [event] = events(step.process(record(in_reply_to="пример@example.org",
                                         references=["root@customer.test", "пример@example.org"])))
    assert (event["status"], event["attempt"], event["smtp_code"]) == ("failed", 1, None)
    assert event["smtp_reply"] == ("cannot compose the mail: In-Reply-To id 'пример@example.org' is not a msg-id "
                                   "(1-980 printable ASCII characters)")
    assert pool.calls == []
    [event] = events(step.process(record(id="out-2")))
    assert event["status"] == "sent" and len(pool.calls) == 1


def test_an_encoding_error_past_compose_fails_that_mail_not_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Were compose's own checks to miss something, the email package's error
    while encoding still fails only this mail."""
    monkeypatch.setattr("services.common.compose._check_header_values", lambda mail: None)
    step, pool, _, _ = make([SendResult(250, "ok")])
    [event] = events(step.process(record(references=["пример@example.org"])))
    assert event["status"] == "failed"
    assert event["smtp_reply"].startswith("cannot compose the mail: UnicodeEncodeError: ")
    [event] = events(step.process(record(to=[{"email": "carol@customer.test\nBcc: x@y.test", "name": None}])))
    assert event["status"] == "failed"
    assert pool.calls == []


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"to": [{"email": "carol@customer.test\r\nBcc: all@customer.test", "name": None}]},
     "the address 'carol@customer.test\\r\\nBcc: all@customer.test' contains a line break (U+000D)"),
    ({"to": [{"email": "carol@customer.test", "name": "Carol\u2028Bcc: all@customer.test"}]},
     "the To name 'Carol\\u2028Bcc: all@customer.test' contains a line break (U+2028)"),
    ({"cc": [{"email": "dan@customer.test", "name": "Dan\x85X: 1"}]},
     "the Cc name 'Dan\\x85X: 1' contains a line break (U+0085)"),
    ({"alias": "Support\nBcc: all@customer.test"},
     "the alias 'Support\\nBcc: all@customer.test' contains a line break (U+000A)"),
    ({"subject": "Re: [SUPPORT-12] x\r\nBcc: all@customer.test"},
     "the subject 'Re: [SUPPORT-12] x\\r\\nBcc: all@customer.test' contains a line break (U+000D)"),
    ({"subject": "Re: x\x00"}, "the subject 'Re: x\\x00' contains a NUL character"),
])
def test_header_injection_fails_the_mail_and_nothing_reaches_smtp(overrides: dict[str, Any], reason: str) -> None:
    step, pool, _, _ = make([SendResult(250, "ok")])
    [event] = events(step.process(record(**overrides)))
    assert event["status"] == "failed"
    assert event["smtp_reply"] == f"cannot compose the mail: {reason}; header text must be one line"
    assert pool.calls == []
