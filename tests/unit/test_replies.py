"""Deciding an agent's reply (services.api.replies): pure, config + ticket in, plan out."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone

import pytest

from services.api.replies import (
    ReplyError,
    ReplyForbidden,
    ReplyInvalid,
    ReplyRequest,
    default_recipients,
    outbound_record,
    parse_addresses,
    plan_reply,
    reply_form,
)
from services.common.codec import codec
from services.common.config import parse_text
from services.tickets import Participant, Recipient, Threading, TicketDetail

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)

CONFIG = parse_text(textwrap.dedent("""\
    organization:
      name: Example Inc.
      domains: [example.com]
      members:
        - {email: alice@example.com, name: Alice Agent, groups: [support]}
        - {email: bob@example.com, name: Bob Builder}
    queues:
      - key: SUPPORT
        name: Customer support
        allow_outbound_mail: true
        mailboxes:
          - address: support@example.com
            accept_external: true
            ingress: true
            smtp: {host: smtp.example.com, security: starttls}
            signatures:
              - {alias: Example support, text: "--\\nExample Inc. support"}
              - {alias: Alice at Example}
          - address: help@example.com
            ingress: true
            smtp: {host: smtp.example.com, address: helpdesk@example.com}
      - key: INTERNAL
        name: Internal desk
        allow_outbound_mail: false
        mailboxes:
          - address: ops@example.com
            ingress: true
            smtp: {host: smtp.example.com}
      - key: NOSMTP
        allow_outbound_mail: true
        mailboxes:
          - {address: quiet@example.com, ingress: true}
    """))


def ticket(queue: str = "SUPPORT", author: str = "carol@customer.test", participants: tuple[Participant, ...] = (),
           summary: str = "Invoice is wrong") -> TicketDetail:
    people = (Participant(author, "Carol Customer", False, "author"), *participants)
    return TicketDetail(
        key=f"{queue}-12", queue=queue, number=12, type=None, components=(), summary=summary,
        description="Please fix it.", description_html=None, status="open", author_email=author,
        author_name="Carol Customer", author_member=author.endswith("@example.com"), created_at=T0,
        updated_at=T0, participants=people, thread=(), attachments=(), message_ids=("root@customer.test",),
    )


def request(**overrides: object) -> ReplyRequest:
    values: dict[str, object] = {"ticket_key": "SUPPORT-12", "author_email": "alice@example.com", "text": "Fixed."}
    values.update(overrides)
    return ReplyRequest(**values)  # type: ignore[arg-type]


# ------------------------------------------------------------------ refusals


def test_outbound_off_refuses_an_external_recipient() -> None:
    with pytest.raises(ReplyForbidden) as caught:
        plan_reply(CONFIG, ticket("INTERNAL"), None, request(ticket_key="INTERNAL-12"))
    assert caught.value.status == 403
    assert caught.value.message == (
        "Queue INTERNAL does not allow sending mail outside the organization; carol@customer.test is external"
    )


def test_outbound_off_names_every_external_recipient() -> None:
    with pytest.raises(ReplyForbidden, match="dan@customer.test, erin@other.test are external"):
        plan_reply(CONFIG, ticket("INTERNAL"), None,
                   request(to=("bob@example.com, dan@customer.test",), cc=("erin@other.test",)))


def test_outbound_off_still_mails_members() -> None:
    plan = plan_reply(CONFIG, ticket("INTERNAL"), None, request(to=("Bob <BOB@example.com>",)))
    assert plan.send_email and plan.to == (Recipient("bob@example.com", "Bob", True),)


def test_only_members_may_reply() -> None:
    with pytest.raises(ReplyForbidden, match="'mallory@customer.test' is not an organization member"):
        plan_reply(CONFIG, ticket(), None, request(author_email="mallory@customer.test"))
    with pytest.raises(ReplyForbidden, match="nobody is not an organization member"):
        plan_reply(CONFIG, ticket(), None, request(author_email=""))


def test_a_queue_without_smtp_cannot_mail_but_takes_internal_comments() -> None:
    with pytest.raises(ReplyError) as caught:
        plan_reply(CONFIG, ticket("NOSMTP"), None, request())
    assert caught.value.status == 400
    assert caught.value.message.startswith("Queue NOSMTP has no mailbox with SMTP settings, so it cannot send mail")
    plan = plan_reply(CONFIG, ticket("NOSMTP"), None, request(internal=True, to=("x@y.org",)))
    assert not plan.send_email and plan.to == () and plan.mailbox is None


def test_empty_text_bad_addresses_and_own_addresses_are_invalid() -> None:
    with pytest.raises(ReplyInvalid, match="no text"):
        plan_reply(CONFIG, ticket(), None, request(text=" \n "))
    with pytest.raises(ReplyInvalid, match="'not-an-address' is not an email address"):
        plan_reply(CONFIG, ticket(), None, request(to=("not-an-address",)))
    with pytest.raises(ReplyInvalid, match="support@example.com is deskmail's own address"):
        plan_reply(CONFIG, ticket(), None, request(cc=("support@example.com",)))
    with pytest.raises(ReplyInvalid, match="no recipients"):
        plan_reply(CONFIG, ticket(), None, request(to=("",)))


def test_unknown_signature_names_the_ones_there_are() -> None:
    with pytest.raises(ReplyError, match="has no signature 'Nope' \\(it has: 'Example support', 'Alice at Example'\\)"):
        plan_reply(CONFIG, ticket(), None, request(signature="Nope"))


# ------------------------------------------------------------------ defaults


def test_recipients_default_to_the_external_participants() -> None:
    people = (
        Participant("alice@example.com", "Alice Agent", True, "participant"),  # a member
        Participant("dan@customer.test", "Dan", False, "participant"),
        Participant("support@example.com", None, False, "participant"),  # deskmail itself
        Participant("helpdesk@example.com", None, False, "participant"),  # its SMTP From address
        Participant("carol@customer.test", "Carol again", False, "participant"),
    )
    detail = ticket(participants=people)
    assert default_recipients(CONFIG, detail) == (
        Recipient("carol@customer.test", "Carol Customer"),
        Recipient("dan@customer.test", "Dan"),
    )
    plan = plan_reply(CONFIG, detail, None, request())
    assert [r.email for r in plan.to] == ["carol@customer.test", "dan@customer.test"]
    assert all(not r.member for r in plan.to)


def test_a_member_authored_ticket_has_no_default_recipient() -> None:
    detail = ticket(author="bob@example.com")
    assert default_recipients(CONFIG, detail) == ()
    with pytest.raises(ReplyInvalid, match="SUPPORT-12 has no external participant"):
        plan_reply(CONFIG, detail, None, request())


def test_explicit_recipients_are_parsed_deduplicated_and_cc_drops_to() -> None:
    plan = plan_reply(CONFIG, ticket(), None, request(
        to=('"Doe, Jane" <JANE@customer.test>; carol@customer.test', "jane@customer.test"),
        cc=("carol@customer.test, Frank <frank@customer.test>",),
    ))
    assert plan.to == (Recipient("jane@customer.test", "Doe, Jane"), Recipient("carol@customer.test"))
    assert plan.cc == (Recipient("frank@customer.test", "Frank"),)


def test_parse_addresses_refuses_header_injection() -> None:
    with pytest.raises(ReplyInvalid):
        parse_addresses(["carol@customer.test\r\nBcc: all@customer.test"])


@pytest.mark.parametrize("char", ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85",
                                  "\u2028", "\u2029", "\x00"])
@pytest.mark.parametrize("where", ["address", "name"])
def test_every_line_break_in_a_typed_recipient_is_refused(char: str, where: str) -> None:
    value = (f"carol@customer.test{char}all@customer.test" if where == "address"
             else f"Carol{char}Bcc <carol@customer.test>")
    for field in ("to", "cc"):
        with pytest.raises(ReplyInvalid) as info:
            plan_reply(CONFIG, ticket(), None, request(**{field: (value,)}))
        assert info.value.message.startswith(f"{field.capitalize()} {value!r} contains ")
        assert info.value.message.endswith("; header text must be one line")


def test_a_u2028_never_makes_one_typed_recipient_two() -> None:
    # getaddresses() alone reads this as two addresses
    with pytest.raises(ReplyInvalid, match="U\\+2028"):
        parse_addresses(["carol@customer.test\u2028mallory@attacker.test"])


def test_a_signature_alias_with_a_line_break_is_refused() -> None:
    with pytest.raises(ReplyInvalid) as info:
        plan_reply(CONFIG, ticket(), None, request(signature="Example support\nBcc: x@y.test"))
    assert info.value.message == ("the signature 'Example support\\nBcc: x@y.test' contains a line break (U+000A); "
                                  "header text must be one line")


def test_a_stored_participant_name_with_a_line_break_is_refused() -> None:
    people = (Participant("dan@customer.test", "Dan\u2029Bcc: x@y.test", False, "participant"),)
    with pytest.raises(ReplyInvalid) as info:
        plan_reply(CONFIG, ticket(participants=people), None, request())
    assert info.value.message.startswith("the To name 'Dan\\u2029Bcc: x@y.test' contains a line break (U+2029)")


def test_subject_signature_and_from_address() -> None:
    plan = plan_reply(CONFIG, ticket(summary="RE: [SUPPORT-12] Invoice is wrong"), None, request())
    assert plan.subject == "Re: [SUPPORT-12] Invoice is wrong"
    assert plan.mailbox is not None and plan.mailbox.address == "support@example.com"
    assert plan.from_address == "support@example.com"
    assert plan.signature is not None and plan.alias == "Example support"
    chosen = plan_reply(CONFIG, ticket(), None, request(signature="Alice at Example"))
    assert chosen.alias == "Alice at Example" and chosen.signature is not None and chosen.signature.text == ""


def test_the_mailbox_that_received_the_ticket_sends_with_its_own_from_address() -> None:
    plan = plan_reply(CONFIG, ticket(), "help@example.com", request())
    assert plan.mailbox is not None and plan.mailbox.address == "help@example.com"
    assert plan.from_address == "helpdesk@example.com"
    # no signatures there: the queue's name is the sender's name
    assert plan.signature is None and plan.alias == "Customer support"
    # a mailbox of another queue, or an unknown one, falls back to the queue's first with SMTP
    for elsewhere in ("ops@example.com", "gone@example.com"):
        assert plan_reply(CONFIG, ticket(), elsewhere, request()).from_address == "support@example.com"


def test_reply_form_defaults() -> None:
    form = reply_form(CONFIG, ticket(), None)
    assert form.to == (Recipient("carol@customer.test", "Carol Customer"),)
    assert form.send_email and form.outbound_allowed
    assert [s.alias for s in form.signatures] == ["Example support", "Alice at Example"]
    quiet = reply_form(CONFIG, ticket("NOSMTP"), None)
    assert quiet.mailbox is None and not quiet.send_email and quiet.signatures == ()
    assert not reply_form(CONFIG, ticket("INTERNAL"), None).outbound_allowed


def test_outbound_record_is_a_valid_outbound_mail() -> None:
    plan = plan_reply(CONFIG, ticket(), None, request(cc=("frank@customer.test",)))
    threading = Threading(
        ticket_key="SUPPORT-12", queue="SUPPORT", summary="Invoice is wrong", comment_id=7,
        in_reply_to="last@customer.test", references=("root@customer.test", "last@customer.test"), created_at=T0,
    )
    record = outbound_record(plan, "out-1", "deskmail.out-1@example.com", threading)
    assert codec("OutboundMail").decode(codec("OutboundMail").encode(record)) == {
        "id": "out-1", "kind": "reply", "ticket": "SUPPORT-12", "comment_id": 7, "queue": "SUPPORT",
        "mailbox": "support@example.com", "from_address": "support@example.com", "alias": "Example support",
        "signature": "--\nExample Inc. support",
        "to": [{"email": "carol@customer.test", "name": "Carol Customer"}],
        "cc": [{"email": "frank@customer.test", "name": None}],
        "subject": "Re: [SUPPORT-12] Invoice is wrong", "text": "Fixed.", "html": None,
        "message_id": "deskmail.out-1@example.com", "in_reply_to": "last@customer.test",
        "references": ["root@customer.test", "last@customer.test"], "attachments": [], "created_at": T0,
    }


def test_outbound_record_leaves_out_stored_ids_that_are_not_msg_ids_and_caps_references() -> None:
    plan = plan_reply(CONFIG, ticket(), None, request())
    refs = ("root@customer.test", "пример@example.org", *(f"r{n}@customer.test" for n in range(100)))
    threading = Threading(
        ticket_key="SUPPORT-12", queue="SUPPORT", summary="Invoice is wrong", comment_id=7,
        in_reply_to="пример@example.org", references=refs, created_at=T0,
    )
    record = outbound_record(plan, "out-1", "deskmail.out-1@example.com", threading)
    assert record["in_reply_to"] is None
    assert record["references"] == ["root@customer.test", *(f"r{n}@customer.test" for n in range(51, 100))]
