"""The mail corpus (tests/corpus/mail): every message delivered, routed and
applied as the pipeline does it, and the ticket, comment or suspended mail it
became checked against its .json (see tests/corpus/README.md).

The path: the ingress's InboundMail record (``services.fetcher.records``), the
router's ``route`` with the corpus's deskmail.yaml, the raw mail kept for
release where the router keeps it, the TicketCommand through its Avro codec,
and ``TicketStore.apply`` on a fresh SQLite database migrated for each message.
A case that answers a thread (its .json names ``thread``) first gets that
thread: a member's mail opens the ticket and an agent answers the customer by
mail under the Message-ID the case replies to. A case whose .json names a
``known_gap`` is what deskmail does not do yet: it is expected to fail."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from services.common.blobs import FolderBlobStore
from services.common.codec import codec
from services.common.config import Secret, load
from services.common.permissions import member_may_use
from services.fetcher.records import inbound_record
from services.router.mailparse import parse
from services.router.route import Routed, route
from services.tickets import Applied, Recipient, TicketDetail, TicketStore

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MAIL = CORPUS / "mail"
CASES = sorted(MAIL.glob("*.eml"))
CONFIG = load(MAIL / "deskmail.yaml")
# The key deskmail signed the Message-IDs of its own mail in the corpus with.
OWN_KEY = Secret("corpus-message-id-key", "corpus")
RECEIVED = datetime(2026, 12, 29, 12, 0, tzinfo=timezone.utc)
INBOUND = codec("InboundMail")
COMMANDS = codec("TicketCommand")
OUTCOMES = {"ticket": "created", "comment": "commented", "suspended": "rejected"}


def expected(path: Path) -> dict[str, Any]:
    return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


def cases() -> list[Any]:
    """One parameter per message; a known gap is expected to fail (strictly: once it is built, the mark goes)."""
    params = []
    for path in CASES:
        gap = expected(path).get("known_gap")
        marks = [pytest.mark.xfail(strict=True, reason=f"known gap: {gap}")] if gap else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TicketStore]:
    with TicketStore(f"sqlite:///{tmp_path}/tickets.db") as s:
        s.migrate()
        yield s


class Pipeline:
    """The fetcher's record, the router and the ticketer, for one message at a time."""

    def __init__(self, store: TicketStore, blobs: FolderBlobStore) -> None:
        self.store = store
        self.blobs = blobs

    def deliver(self, raw: bytes, mailbox: str, received_at: datetime = RECEIVED) -> tuple[Routed, Applied]:
        record = inbound_record(
            record_id=f"smtp:{mailbox}:{hashlib.sha256(raw).hexdigest()}", mailbox=mailbox, source="smtp",
            raw=raw, received_at=received_at, blobs=self.blobs, inline_max_bytes=1 << 20)
        inbound = INBOUND.decode(INBOUND.encode(record))
        routed = route(inbound, inbound["raw"], CONFIG, OWN_KEY)
        if routed.keeps_original:  # as the router's runner does, so a release could bring it back
            routed.command["raw_ref"] = self.blobs.put(inbound["raw"], durable=True)
        return routed, self.store.apply(COMMANDS.decode(COMMANDS.encode(routed.command)))

    def open_thread(self, mailbox: str, customer: str, agent_message_id: str) -> str:
        """A ticket on ``mailbox``'s queue, opened by a member's mail, and the
        agent's emailed answer to ``customer`` under ``agent_message_id``."""
        box = CONFIG.mailbox(mailbox)
        assert box is not None, f"{mailbox} is not in the corpus configuration"
        queue = CONFIG.queue(box.queue)
        assert queue is not None
        member = next(m for m in CONFIG.organization.members if member_may_use(m, queue))
        first = (f"From: {member.email}\nTo: {mailbox}\nSubject: The thread's first mail\n"
                 f"Message-ID: <first.{agent_message_id}>\nDate: Mon, 30 Nov 2026 09:00:00 +0000\n\n"
                 f"{customer} asked us by phone.\n").encode()
        _, applied = self.deliver(first, mailbox, RECEIVED - timedelta(days=2))
        assert applied.outcome == "created" and applied.ticket_key is not None
        self.store.add_reply(
            applied.ticket_key, author_email=member.email, author_name=member.name, text="Our answer.",
            send_email=True, to=[Recipient(customer)], outbound_id=f"out-{agent_message_id}",
            message_id=agent_message_id, build_outbound=lambda threading: b"an encoded OutboundMail",
            now=RECEIVED - timedelta(days=1))
        return applied.ticket_key


def split(text: str, quoted_from: int | None) -> tuple[str, str | None]:
    if quoted_from is None:
        return text, None
    return text[:quoted_from].rstrip(), text[quoted_from:]


def check_text(want: dict[str, Any], text: str, quoted: str | None) -> None:
    for phrase in want["text_contains"]:
        assert phrase in text, f"lost from the text: {phrase!r}"
    for phrase in want["text_excludes"]:
        assert phrase not in text, f"left in the text: {phrase!r}"
    if want["quoted"] is None:
        assert quoted is None, f"split off although it must stay whole: {(quoted or '')[:60]!r}"
    else:
        assert quoted is not None, "nothing was split off"
        for phrase in want["quoted"]["contains"]:
            assert phrase in quoted, f"missing from the quoted part: {phrase!r}"


def check_stored(want: dict[str, Any], ticket: TicketDetail, comment_id: int | None) -> None:
    if comment_id is None:
        text, quoted, author, charset = ticket.description, None, ticket.author_email, ticket.charset_detected
        assert ticket.summary == want["subject"]
    else:
        [entry] = [e for e in ticket.thread if e.id == comment_id]
        text, quoted, author, charset = entry.body, entry.quoted, entry.author_email, entry.charset_detected
    check_text(want, text, quoted)
    assert author == want["author"]
    assert charset == want["charset_detected"]
    assert [a.filename for a in ticket.attachments if a.comment_id == comment_id] == want["attachments"]
    people = {p.email for p in ticket.participants}
    assert set(want["participants"]) <= people
    assert not people & CONFIG.own_addresses, "deskmail's own addresses are never participants"


@pytest.mark.parametrize("path", cases())
def test_a_message_becomes_what_its_client_meant(path: Path, store: TicketStore, tmp_path: Path) -> None:
    want = expected(path)
    raw = path.read_bytes()
    pipeline = Pipeline(store, FolderBlobStore(tmp_path / "blobs"))
    thread = pipeline.open_thread(want["mailbox"], want["author"], want["thread"]) if "thread" in want else None

    routed, applied = pipeline.deliver(raw, want["mailbox"])
    command = routed.command

    assert applied.outcome == OUTCOMES[want["outcome"]], f"{command['action']}, reason {command['reason']!r}"
    assert command["subject"] == want["subject"]
    assert command["author"]["email"] == want["author"]
    assert [p["email"] for p in command["participants"]] == want["participants"]
    assert [a["filename"] for a in command["attachments"]] == want["attachments"]
    assert command["charset_detected"] == want["charset_detected"]
    for value in (command["subject"], command["text"], command["author"]["name"] or "",
                  *(a["filename"] for a in command["attachments"])):
        assert "\ufffd" not in value, f"a replacement character in {value[:60]!r}"

    if want["outcome"] == "suspended":
        [item] = store.list_suspended().items
        assert (item.command_id, item.reason_code, item.author_email, item.subject) == (
            command["id"], want["reason"], want["author"], want["subject"])
        assert item.raw_ref is not None, "the original is kept, so an admin can release it"
        assert store.count_tickets() == (0 if thread is None else 1)
        check_text(want, *split(command["text"], command["quoted_from"]))
        return
    assert want.get("reason") is None, "only suspended mail has a reason"
    assert applied.ticket_key is not None
    if want["outcome"] == "comment":
        assert applied.ticket_key == thread, "the answer lands on the ticket whose mail it answers"
    else:
        assert want["quoted"] is None, "a new ticket keeps the whole text"
    ticket = store.get_ticket(applied.ticket_key)
    assert ticket is not None
    check_stored(want, ticket, applied.comment_id if want["outcome"] == "comment" else None)
    if want["outcome"] == "comment":
        [entry] = [e for e in ticket.thread if e.id == applied.comment_id]
        assert entry.automatic == (command["classification"] in ("auto_reply", "bounce"))


def test_the_corpus_is_there() -> None:
    replies = sorted((CORPUS / "replies").glob("*.eml"))
    assert len(CASES) >= 26 and len(CASES) + len(replies) >= 84
    assert {p.stem for p in MAIL.glob("*.json")} == {p.stem for p in CASES}, "every .eml has its .json"
    wants = {p: expected(p) for p in CASES}
    assert {w["language"] for w in wants.values()} == {"en", "ru"}
    assert {w["outcome"] for w in wants.values()} == set(OUTCOMES)
    assert {"external_not_accepted", "no_queue_access", "auto_reply", "bounce", "loop"} <= {
        w.get("reason") for w in wants.values()}
    for path, want in wants.items():
        first = path.read_bytes().split(b"\n", 1)[0].decode("ascii")
        assert first == f"X-Corpus-Exercises: {want['exercises']}", path.name
        assert CONFIG.mailbox(want["mailbox"]) is not None, path.name
        assert ("thread" in want) == (want["outcome"] == "comment"), path.name
        date = parse(path.read_bytes()).date
        assert date is not None and (date.year, date.month) == (2026, 12), path.name
