"""The router's decision for one mail: queue defaults, access, classification, threading."""

from __future__ import annotations

import hashlib
import textwrap
from datetime import datetime, timezone

import pytest

from services.common.config import parse_text
from services.router.route import UnknownMailbox, route

CONFIG_TEXT = textwrap.dedent("""\
    organization:
      members:
        - {email: alice@example.com, name: Alice, groups: [support]}
    queues:
      - key: SUPPORT
        access: [group:support]
        mailboxes:
          - address: support@example.com
            accept_external: true
            ingress: true
            ticket: {type: question, components: [billing, web]}
      - key: OPS
        access: [group:support]
        mailboxes:
          - {address: ops@example.com, ingress: true, ticket: {type: task}}
    """)
CONFIG = parse_text(CONFIG_TEXT)


def _inbound(raw: bytes, mailbox: str = "support@example.com") -> dict:
    return {"id": "imap:x:1:7", "mailbox": mailbox, "source": "imap", "uidvalidity": 1, "uid": 7,
            "received_at": datetime(2026, 11, 1, tzinfo=timezone.utc), "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(), "raw": raw, "blob_ref": None}


def _mail(sender: str = "Carol <carol@customer.test>", to: str = "support@example.com", extra: str = "",
          subject: str = "Invoice missing", body: str = "Where is it?") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nCc: Dan <dan@customer.test>, support@example.com\r\n"
            f"Subject: {subject}\r\nMessage-ID: <m1@customer.test>\r\n{extra}\r\n{body}\r\n").encode()


def test_new_mail_gets_the_address_defaults():
    routed = route(_inbound(_mail()), _mail(), CONFIG)
    c = routed.command
    assert (c["action"], c["classification"], c["queue"], c["ticket_type"], c["components"]) == (
        "create", "new", "SUPPORT", "question", ["billing", "web"])
    assert c["author"] == {"email": "carol@customer.test", "name": "Carol", "member": False, "verified": False}
    # deskmail's own address and the author are not participants
    assert c["participants"] == [{"email": "dan@customer.test", "name": "Dan", "member": False, "verified": False}]
    assert (c["message_id"], c["thread_key"], routed.key) == ("m1@customer.test", "m1@customer.test", b"m1@customer.test")
    assert (c["source_uidvalidity"], c["source_uid"], c["reason"]) == (1, 7, None)


def test_reply_is_keyed_by_the_thread_root():
    raw = _mail(extra="In-Reply-To: <m0@example.com>\r\nReferences: <root@customer.test> <m0@example.com>\r\n")
    c = route(_inbound(raw), raw, CONFIG).command
    assert (c["action"], c["classification"], c["thread_key"]) == ("comment", "reply", "root@customer.test")


def test_ticket_key_in_subject_makes_a_reply():
    raw = _mail(subject="RE: [support-12] Invoice missing")
    c = route(_inbound(raw), raw, CONFIG).command
    assert (c["action"], c["ticket_key_hint"]) == ("comment", "SUPPORT-12")


def test_outsider_on_members_only_address_is_rejected_with_reason():
    raw = _mail(to="ops@example.com")
    routed = route(_inbound(raw, "ops@example.com"), raw, CONFIG)
    assert routed.action == "reject" and routed.attachments == []
    assert routed.command["reason"].startswith("external_not_accepted: carol@customer.test is not")


def test_member_with_access_is_accepted_on_members_only_address():
    raw = _mail(sender="alice@example.com", to="ops@example.com")
    c = route(_inbound(raw, "ops@example.com"), raw, CONFIG).command
    assert (c["action"], c["queue"], c["ticket_type"], c["author"]["member"]) == ("create", "OPS", "task", True)


def test_auto_reply_without_thread_opens_no_ticket():
    raw = _mail(extra="Auto-Submitted: auto-replied\r\n", subject="Out of office")
    c = route(_inbound(raw), raw, CONFIG).command
    assert (c["action"], c["classification"]) == ("reject", "auto_reply")


def test_auto_reply_in_a_thread_is_a_comment():
    raw = _mail(extra="Auto-Submitted: auto-replied\r\nIn-Reply-To: <out@example.com>\r\n")
    c = route(_inbound(raw), raw, CONFIG).command
    assert (c["action"], c["classification"]) == ("comment", "auto_reply")


def test_mail_from_own_address_is_a_loop():
    raw = _mail(sender="support@example.com")
    c = route(_inbound(raw), raw, CONFIG).command
    assert c["action"] == "reject" and c["reason"].startswith("loop:")


def test_missing_message_id_is_synthesized_from_content():
    raw = _mail().replace(b"Message-ID: <m1@customer.test>\r\n", b"")
    c = route(_inbound(raw), raw, CONFIG).command
    assert c["message_id"] == hashlib.sha256(raw).hexdigest() + "@deskmail.invalid"


def test_unknown_mailbox():
    with pytest.raises(UnknownMailbox, match="nobody@example.com is not in the configuration"):
        route(_inbound(_mail(), "nobody@example.com"), _mail(), CONFIG)


def test_outsider_answering_on_members_only_address_may_only_reply():
    raw = _mail(to="ops@example.com", extra="In-Reply-To: <deskmail.out-1@example.com>\r\n")
    routed = route(_inbound(raw, "ops@example.com"), raw, CONFIG)
    c = routed.command
    assert (c["action"], c["reply_only"], c["classification"]) == ("comment", True, "reply")
    assert c["reason"].startswith("external_not_accepted: carol@customer.test is not")
    assert c["reason"].endswith("accepted only as a reply to a known thread")


def test_a_subject_key_alone_does_not_let_an_outsider_in():
    raw = _mail(to="ops@example.com", subject="Re: [OPS-1] hello")
    assert route(_inbound(raw, "ops@example.com"), raw, CONFIG).action == "reject"


def test_accepted_mail_is_not_reply_only():
    raw = _mail(extra="In-Reply-To: <x@example.com>\r\n")
    assert route(_inbound(raw), raw, CONFIG).command["reply_only"] is False


# -- member identity: the From must be proven once trust is configured ----------

TRUSTING = parse_text(textwrap.dedent("""\
    organization:
      members:
        - {email: alice@example.com, name: Alice, groups: [support]}
      sender_authentication:
        trusted_authserv_ids: [mx.example.com]
    queues:
      - key: SUPPORT
        access: [group:support]
        mailboxes:
          - {address: support@example.com, accept_external: true, ingress: true}
      - key: OPS
        access: [group:support]
        mailboxes:
          - {address: ops@example.com, ingress: true}
    """))
BORDER = "Received: from mail.example.com (mail.example.com [192.0.2.5]) by mx.example.com with ESMTPS id 9\r\n"


def _member_mail(trace: str, to: str = "ops@example.com") -> bytes:
    return (f"{trace}From: Alice <alice@example.com>\r\nTo: {to}\r\nSubject: Disk full\r\n"
            f"Message-ID: <a1@example.com>\r\n\r\nPlease look.\r\n").encode()


@pytest.mark.parametrize(
    "trace",
    [
        "",                                                                                 # no proof at all
        f"Authentication-Results: relay.other.test; dmarc=pass header.from=example.com\r\n{BORDER}",  # untrusted id
        f"{BORDER}Authentication-Results: mx.example.com; dmarc=fail header.from=example.com\r\n"
        "Authentication-Results: mx.example.com; dmarc=pass header.from=example.com\r\n",  # forged below the real
        f"Authentication-Results: mx.example.com; dkim=pass header.d=attacker.test\r\n{BORDER}",  # not aligned
        f"Authentication-Results: mx.example.com; dmarc=fail header.from=example.com\r\n{BORDER}",
    ],
)
def test_unproven_member_on_members_only_address_is_rejected(trace):
    raw = _member_mail(trace)
    routed = route(_inbound(raw, "ops@example.com"), raw, TRUSTING)
    c = routed.command
    assert (c["action"], c["author"]["member"], c["author"]["verified"], routed.attachments) == (
        "reject", False, False, [])
    assert c["reason"].startswith("sender_not_authenticated: mail from member address alice@example.com")


@pytest.mark.parametrize("above_the_hop", [True, False], ids=["above-its-hop", "below-its-hop-gmail-order"])
@pytest.mark.parametrize(
    "results", ["dmarc=pass header.from=example.com", "dkim=pass header.d=example.com header.s=s1"],
)
def test_proven_member_gets_member_rights(results, above_the_hop):
    field = f"Authentication-Results: mx.example.com; {results}\r\n"
    raw = _member_mail(field + BORDER if above_the_hop else BORDER + field)
    c = route(_inbound(raw, "ops@example.com"), raw, TRUSTING).command
    assert (c["action"], c["queue"], c["author"]["member"], c["reason"]) == ("create", "OPS", True, None)
    assert c["author"]["verified"] is True


def test_unproven_member_on_external_address_is_an_outsider():
    raw = _member_mail(f"Authentication-Results: mx.example.com; dkim=pass header.d=attacker.test\r\n{BORDER}",
                       to="support@example.com")
    c = route(_inbound(raw), raw, TRUSTING).command
    assert (c["action"], c["author"], c["reason"]) == (
        "create", {"email": "alice@example.com", "name": "Alice", "member": False, "verified": False}, None)


def test_without_trust_configured_a_member_is_trusted_by_from():
    raw = _member_mail("")
    c = route(_inbound(raw, "ops@example.com"), raw, CONFIG).command
    assert (c["action"], c["author"]["member"]) == ("create", True)
    # ...but nothing proved it: the ticket page marks the author "not verified".
    assert c["author"]["verified"] is False


def test_without_trust_configured_even_a_passing_result_does_not_verify():
    """With no trusted server named, an Authentication-Results field is the sender's own word."""
    raw = _member_mail(f"Authentication-Results: mx.example.com; dmarc=pass header.from=example.com\r\n{BORDER}")
    c = route(_inbound(raw, "ops@example.com"), raw, CONFIG).command
    assert (c["author"]["member"], c["author"]["verified"]) == (True, False)


def test_a_proven_outsider_is_verified_but_stays_an_outsider():
    trace = f"Authentication-Results: mx.example.com; dmarc=pass header.from=customer.test\r\n{BORDER}"
    raw = (trace + _mail().decode()).encode()
    c = route(_inbound(raw), raw, TRUSTING).command
    assert (c["author"]["member"], c["author"]["verified"]) == (False, True)


def test_the_runner_counts_an_unproven_member_as_a_rejection(tmp_path):
    from services.common import metrics
    from services.common.blobs import FolderBlobStore
    from services.common.bus import Record
    from services.common.codec import codec
    from services.router.runner import RouterStep

    raw = _member_mail("")
    step = RouterStep(TRUSTING, FolderBlobStore(tmp_path))
    rejected = metrics.ROUTER_REJECTIONS.labels("sender_not_authenticated")
    before = rejected._value.get()
    [out] = step.process(Record("inbound", 0, 0, None, codec("InboundMail").encode(_inbound(raw, "ops@example.com"))))
    command = codec("TicketCommand").decode(out.value)
    assert (command["action"], command["author"]["member"]) == ("reject", False)
    assert rejected._value.get() == before + 1


def test_a_reply_says_where_its_quote_begins():
    body = "Paid today.\r\n\r\nOn Tue, Dec 1, 2026 at 10:15 AM Maria <support@example.com> wrote:\r\n> Please pay.\r\n"
    raw = _mail(extra="In-Reply-To: <m0@example.com>\r\n", body=body)
    c = route(_inbound(raw), raw, CONFIG).command
    assert c["text"][:c["quoted_from"]].rstrip() == "Paid today."
    assert c["text"][c["quoted_from"]:].startswith("On Tue, Dec 1, 2026")


def test_a_new_mail_is_not_split():
    body = "Hello.\r\n\r\nOn Tue, Dec 1, 2026 at 10:15 AM Maria <support@example.com> wrote:\r\n> Please pay.\r\n"
    raw = _mail(body=body)
    assert route(_inbound(raw), raw, CONFIG).command["quoted_from"] is None


# -- suspended mail: the original is kept, and a release is not refused again ---


def _step(tmp_path):
    from services.common.blobs import FolderBlobStore
    from services.router.runner import RouterStep

    blobs = FolderBlobStore(tmp_path / "blobs")
    return RouterStep(CONFIG, blobs), blobs


def _through(step, inbound: dict) -> dict:
    from services.common.bus import Record
    from services.common.codec import codec

    [out] = step.process(Record("inbound", 0, 0, None, codec("InboundMail").encode(inbound)))
    return codec("TicketCommand").decode(out.value)


def test_a_rejected_mail_keeps_its_original_in_the_blob_store(tmp_path):
    step, blobs = _step(tmp_path)
    raw = _mail(to="ops@example.com")
    command = _through(step, _inbound(raw, "ops@example.com"))
    assert command["action"] == "reject"
    assert command["raw_ref"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert blobs.get(command["raw_ref"]) == raw


def test_a_claim_checked_rejection_refers_to_the_fetchers_blob(tmp_path):
    step, blobs = _step(tmp_path)
    raw = _mail(to="ops@example.com")
    ref = blobs.put(raw)
    command = _through(step, {**_inbound(raw, "ops@example.com"), "raw": None, "blob_ref": ref})
    assert (command["action"], command["raw_ref"]) == ("reject", ref)


def test_an_outsiders_reply_keeps_its_original_in_case_no_thread_takes_it(tmp_path):
    step, blobs = _step(tmp_path)
    raw = _mail(to="ops@example.com", extra="In-Reply-To: <deskmail.out-1@example.com>\r\n")
    command = _through(step, _inbound(raw, "ops@example.com"))
    assert (command["action"], command["reply_only"]) == ("comment", True)
    assert blobs.get(command["raw_ref"]) == raw


def test_accepted_mail_keeps_no_original(tmp_path):
    step, blobs = _step(tmp_path)
    command = _through(step, _inbound(_mail()))
    assert (command["action"], command["raw_ref"]) == ("create", None)
    assert not (tmp_path / "blobs").exists() or not any(p.is_file() for p in (tmp_path / "blobs").rglob("*"))


def _released(raw: bytes, mailbox: str = "ops@example.com", by: str | None = "alice@example.com") -> dict:
    return {**_inbound(raw, mailbox), "id": "release:imap:x:1:7", "uidvalidity": 0, "uid": 0,
            "release_of": "imap:x:1:7", "released_by": by}


@pytest.mark.parametrize("mail, action", [
    (_mail(to="ops@example.com"), "create"),                                             # a stranger, members only
    (_mail(to="ops@example.com", extra="In-Reply-To: <gone@example.com>\r\n"), "comment"),  # no longer reply-only
    (_mail(extra="Auto-Submitted: auto-replied\r\n"), "create"),                        # an auto-reply
    (_mail(sender="support@example.com"), "create"),                                     # a loop
])
def test_a_released_mail_is_routed_and_not_rejected_again(mail, action):
    mailbox = "ops@example.com" if b"To: ops@" in mail else "support@example.com"
    c = route(_released(mail, mailbox), mail, CONFIG).command
    assert (c["action"], c["reply_only"], c["id"]) == (action, False, "release:imap:x:1:7")
    assert c["reason"] == "released by alice@example.com"
    assert c["queue"] == CONFIG.mailbox(mailbox).queue


def test_a_released_mail_keeps_no_second_original(tmp_path):
    step, _ = _step(tmp_path)
    raw = _mail(to="ops@example.com")
    command = _through(step, _released(raw, by=None))
    assert (command["action"], command["raw_ref"], command["reason"]) == ("create", None, "released")


def test_mail_deskmail_itself_sent_is_a_loop_whatever_its_from():
    from services.common.config import Secret
    from services.common.mailrules import new_message_id

    key = Secret("k" * 40, "test")
    mid = new_message_id("out-9", "support@example.com", key=key, ticket="SUPPORT-4")
    raw = (f"From: Maria <maria@elsewhere.test>\r\nTo: support@example.com\r\nSubject: Re: [SUPPORT-4] x\r\n"
           f"Message-ID: <{mid}>\r\nX-Deskmail-Ticket: SUPPORT-4\r\n\r\nHello\r\n").encode()
    c = route(_inbound(raw), raw, CONFIG, own_key=key).command
    assert (c["action"], c["reason"].split(":")[0]) == ("reject", "loop")
    # without the key, or with another ticket in the header, it is ordinary mail
    assert route(_inbound(raw), raw, CONFIG).command["action"] != "reject"
    forged = raw.replace(b"X-Deskmail-Ticket: SUPPORT-4", b"X-Deskmail-Ticket: SUPPORT-5")
    assert route(_inbound(forged), forged, CONFIG, own_key=key).command["action"] != "reject"
    # a function giving the key works the same: it is asked for it, since the mail names a ticket
    assert route(_inbound(raw), raw, CONFIG, own_key=lambda: key).command["action"] == "reject"


def test_an_auto_reply_in_a_thread_keeps_its_original_in_case_the_thread_is_unknown(tmp_path):
    step, blobs = _step(tmp_path)
    raw = _mail(extra="Auto-Submitted: auto-replied\r\nIn-Reply-To: <out@example.com>\r\n")
    command = _through(step, _inbound(raw))
    assert (command["action"], command["classification"]) == ("comment", "auto_reply")
    assert blobs.get(command["raw_ref"]) == raw
    released = _through(step, _released(raw, mailbox="support@example.com"))
    assert (released["classification"], released["raw_ref"]) == ("auto_reply", None)


NEWSLETTER = "List-Unsubscribe: <https://news.customer.test/u/7>\r\nList-Id: News <news.customer.test>\r\n"


def test_newsletter_opens_no_ticket_and_is_suspended_as_bulk():
    raw = _mail(extra=NEWSLETTER, subject="Our December offers")
    routed = route(_inbound(raw), raw, CONFIG)
    c = routed.command
    assert (c["action"], c["classification"]) == ("reject", "auto_reply")
    assert c["reason"].startswith("bulk: mailing-list or newsletter mail")
    assert routed.keeps_original  # releasable


def test_list_mail_on_a_thread_is_machine_mail_that_changes_nothing():
    raw = _mail(extra=NEWSLETTER + "In-Reply-To: <m0@example.com>\r\n")
    c = route(_inbound(raw), raw, CONFIG).command
    assert (c["action"], c["classification"]) == ("comment", "auto_reply")


def test_list_mail_is_a_persons_mail_when_the_config_accepts_lists():
    config = parse_text(textwrap.dedent("""\
        automatic_mail: {mailing_lists: accept}
        queues:
          - key: SUPPORT
            mailboxes:
              - {address: support@example.com, accept_external: true, ingress: true}
        """))
    raw = _mail(extra=NEWSLETTER)
    c = route(_inbound(raw), raw, config).command
    assert (c["action"], c["classification"], c["reason"]) == ("create", "new", None)


def test_the_router_picks_up_a_message_id_key_made_after_it_started(tmp_path):
    """The api makes the data folder's key on the first reply; the router started before that
    must know deskmail's own mail (loops, bounces) from then on, without a restart, even when
    the bounce of that first reply comes back at once."""
    from services.common.blobs import FolderBlobStore
    from services.common.config import message_id_key
    from services.router.runner import RouterStep

    config = parse_text(CONFIG_TEXT.replace("organization:", f"data_dir: {tmp_path}\norganization:", 1))
    step = RouterStep(config, FolderBlobStore(tmp_path / "blobs"))
    assert step.own_key() is None
    made = message_id_key(config)  # as the api does on the first reply
    assert step.own_key() == made  # looked for again when a mail needs it
    assert step.own_key() == made  # found once, kept


def test_the_key_is_asked_for_only_by_mail_that_may_be_deskmails_own():
    asked: list[int] = []

    def key():
        asked.append(1)
        return None

    raw = _mail()
    route(_inbound(raw), raw, CONFIG, own_key=key)
    assert asked == []  # a customer's mail: no stat of the key file
