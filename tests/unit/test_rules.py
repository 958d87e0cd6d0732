"""Routing rules: matching, order, stop, overriding and accumulating, drop, bounds, and the router's use of them."""

from __future__ import annotations

import hashlib
import textwrap
from datetime import datetime, timezone
from typing import Any

import pytest

from services.common import suspended
from services.common.config import Config, parse_text
from services.router import rules
from services.router.route import route
from services.router.rules import MAX_BODY_CHARS, MAX_HEADER_CHARS, Facts, apply_rules, evaluate

MEMBERS = """\
    organization:
      admins: [carl@example.com]
      members:
        - {email: ann@example.com, groups: [support]}
        - {email: bob@example.com}
        - {email: carl@example.com}
    """


SUPPORT = """\
queues:
  - key: SUPPORT
    access: [group:support, bob@example.com]
    mailboxes:
      - {address: support@example.com, ingress: true, accept_external: true,
         ticket: {type: question, components: [web]}}
    rules:
"""
BILLING = """\
  - key: BILLING
    access: [group:support]
    mailboxes: [{address: billing@example.com, ingress: true}]
"""


def _config(rules_yaml: str) -> Config:
    """SUPPORT (whose address gives type question, component web) with ``rules_yaml``, and BILLING."""
    return parse_text(textwrap.dedent(MEMBERS) + SUPPORT + textwrap.indent(textwrap.dedent(rules_yaml), "      ")
                      + BILLING)


def _facts(**values: Any) -> Facts:
    headers = values.pop("headers", {})
    return Facts(**{"sender": "carol@customer.test", **values},
                 headers=lambda name: headers.get(name, ()))


def _outcome(config: Config, facts: Facts, released: bool = False) -> rules.Outcome:
    queue = config.queue("SUPPORT")
    assert queue is not None
    return apply_rules(config, queue, facts, released=released, ticket_type="question", components=("web",))


# -- matching -----------------------------------------------------------------


@pytest.mark.parametrize(("match", "facts", "matched"), [
    ('{from: "@BigCorp.test"}', {"sender": "boss@bigcorp.test"}, True),
    ('{from: "@bigcorp.test"}', {"sender": "boss@other.test"}, False),
    ('{from: {regex: "^boss@"}}', {"sender": "boss@bigcorp.test"}, True),
    ('{to: "sales@"}', {"to": ("support@example.com", "sales@example.com")}, True),
    ('{to: "sales@"}', {"cc": ("sales@example.com",)}, False),
    ('{cc: {regex: "@example\\\\.com$"}}', {"cc": ("sales@example.com",)}, True),
    ('{subject: {regex: "^(urgent|срочно)"}}', {"subject": "СРОЧНО: сервер"}, True),
    ('{subject: {regex: "^(urgent|срочно)"}}', {"subject": "Re: urgent"}, False),
    ('{subject: "Invoice"}', {"subject": "your INVOICE"}, True),
    ('{subject: "straße"}', {"subject": "STRASSE 5"}, True),  # casefolded, not just lower-cased
    ('{body: {regex: "invoice \\\\d+"}}', {"body": "see Invoice 42 attached"}, True),
    ('{body: "refund"}', {"body": "no"}, False),
    ('{header: {name: X-Priority, value: "1"}}', {"headers": {"x-priority": ("1 (Highest)",)}}, True),
    ('{header: {name: X-Priority, value: {regex: "^1$"}}}', {"headers": {"x-priority": ("3", "1")}}, True),
    ('{header: {name: X-Priority, value: {regex: "^1$"}}}', {"headers": {"x-priority": ("1 (Highest)",)}}, False),
    ('{header: {name: List-Id}}', {"headers": {"list-id": ("<news.shop.test>",)}}, True),
    ('{header: {name: List-Id}}', {}, False),
    ("{authenticated: true}", {"authenticated": True}, True),
    ("{authenticated: true}", {"authenticated": False}, False),
    ("{authenticated: false}", {"authenticated": False}, True),
    # every condition must hold
    ('{from: "@bigcorp.test", subject: "invoice"}', {"sender": "a@bigcorp.test", "subject": "hello"}, False),
    ('{from: "@bigcorp.test", subject: "invoice"}', {"sender": "a@bigcorp.test", "subject": "Invoice"}, True),
])
def test_a_rule_matches_when_every_condition_holds(match: str, facts: dict[str, Any], matched: bool) -> None:
    config = _config(f"- name: r\n  match: {match}\n")
    assert _outcome(config, _facts(**facts)).matched == (("r",) if matched else ())


def test_addresses_are_matched_on_the_address_not_the_display_name() -> None:
    raw = (b"From: \"boss@bigcorp.test\" <mallory@evil.test>\r\nTo: support@example.com\r\n"
           b"Subject: hi\r\nMessage-ID: <m1@evil.test>\r\n\r\nhello\r\n")
    config = _config('- name: vip\n  match: {from: "@bigcorp.test"}\n  set: {priority: urgent}\n')
    assert route(_inbound(raw), raw, config).command["matched_rules"] == []


# -- order, stop, override, accumulate ----------------------------------------


ORDERED = """\
    - name: first
      match: {subject: invoice}
      set: {type: incident, components: [billing], tags: [money], priority: low, assignee: ann@example.com}
    - name: second
      match: {subject: invoice}
      set: {type: task, components: [billing, legal], tags: [contract, money], priority: high}
    - name: not-this
      match: {subject: refund}
      set: {type: refund}
    - name: third
      match: {subject: invoice}
      set: {assignee: carl@example.com, tags: [vip]}
    """


def test_every_matching_rule_applies_later_scalars_win_lists_accumulate() -> None:
    outcome = _outcome(_config(ORDERED), _facts(subject="Invoice 7"))
    assert outcome.matched == ("first", "second", "third")
    assert (outcome.ticket_type, outcome.priority, outcome.assignee, outcome.assignee_rule) == (
        "task", "high", "carl@example.com", "third")
    assert outcome.components == ("web", "billing", "legal")  # after the address's, each once, in order
    assert outcome.tags == ("money", "contract", "vip")
    assert outcome.dropped_by is None and outcome.queue is None


def test_nothing_matched_keeps_the_address_defaults() -> None:
    outcome = _outcome(_config(ORDERED), _facts(subject="hello"))
    assert outcome == rules.Outcome(ticket_type="question", components=("web",))


def test_stop_ends_the_list_after_a_rule_that_matched() -> None:
    config = _config(ORDERED.replace("      set: {type: task,", "      stop: true\n      set: {type: task,"))
    outcome = _outcome(config, _facts(subject="invoice"))
    assert outcome.matched == ("first", "second") and outcome.assignee == "ann@example.com"
    # a stop rule that does not match stops nothing
    assert _outcome(config, _facts(subject="refund")).matched == ("not-this",)


def test_a_move_does_not_apply_the_target_queues_rules() -> None:
    config = parse_text(textwrap.dedent(MEMBERS) + textwrap.dedent("""\
        queues:
          - key: SUPPORT
            mailboxes: [{address: support@example.com, ingress: true, accept_external: true}]
            rules:
              - {name: to-billing, match: {subject: invoice}, set: {queue: BILLING}}
          - key: BILLING
            mailboxes: [{address: billing@example.com, ingress: true}]
            rules:
              - {name: back, match: {subject: invoice}, set: {queue: SUPPORT, priority: urgent}}
        """))
    outcome = _outcome(config, _facts(subject="invoice"))
    assert (outcome.matched, outcome.queue, outcome.priority) == (("to-billing",), "BILLING", None)


def test_a_later_rule_may_keep_the_mail_in_its_queue() -> None:
    config = _config("""\
        - {name: to-billing, match: {subject: invoice}, set: {queue: BILLING}}
        - {name: but-vip-stays, match: {from: "@bigcorp.test"}, set: {queue: SUPPORT}}
        """)
    assert _outcome(config, _facts(subject="invoice")).queue == "BILLING"
    assert _outcome(config, _facts(subject="invoice", sender="a@bigcorp.test")).queue is None


def test_an_assignee_who_cannot_see_the_final_queue_is_not_set() -> None:
    # bob may use SUPPORT (his rule is valid there), but a later rule moves the ticket to BILLING
    config = _config("""\
        - {name: bobs, match: {subject: invoice}, set: {assignee: bob@example.com}}
        - {name: to-billing, match: {subject: invoice}, set: {queue: BILLING}}
        """)
    outcome = _outcome(config, _facts(subject="invoice"))
    assert (outcome.queue, outcome.assignee, outcome.assignee_rule) == ("BILLING", None, None)
    assert outcome.matched == ("bobs", "to-billing")


# -- drop ---------------------------------------------------------------------


DROPPING = """\
    - {name: tag-it, match: {subject: offer}, set: {tags: [marketing]}}
    - {name: spam, match: {header: {name: X-Spam-Flag, value: "YES"}}, drop: true, set: {tags: [spam]}}
    - {name: after, match: {subject: offer}, set: {priority: low}}
    """


def test_a_drop_ends_the_list_and_names_the_rule() -> None:
    facts = _facts(subject="offer", headers={"x-spam-flag": ("YES",)})
    outcome = _outcome(_config(DROPPING), facts)
    assert (outcome.dropped_by, outcome.matched) == ("spam", ("tag-it", "spam"))


def test_a_released_mail_skips_the_drop_but_gets_the_actions() -> None:
    facts = _facts(subject="offer", headers={"x-spam-flag": ("YES",)})
    outcome = _outcome(_config(DROPPING), facts, released=True)
    assert outcome.dropped_by is None
    assert (outcome.matched, outcome.tags, outcome.priority) == (("tag-it", "spam", "after"), ("marketing", "spam"),
                                                                 "low")


# -- bounds -------------------------------------------------------------------


def test_a_regex_sees_only_the_first_100000_characters_of_the_body() -> None:
    config = _config('- {name: tail, match: {body: {regex: "needle"}}}\n')
    assert MAX_BODY_CHARS == 100_000
    assert _outcome(config, _facts(body="x" * (MAX_BODY_CHARS - 6) + "needle")).matched == ("tail",)
    assert _outcome(config, _facts(body="x" * (MAX_BODY_CHARS - 5) + "needle")).matched == ()
    assert _outcome(_config('- {name: tail, match: {body: "NEEDLE"}}\n'),
                    _facts(body="x" * MAX_BODY_CHARS + "needle")).matched == ()


def test_a_header_value_is_bounded_too() -> None:
    config = _config('- {name: h, match: {header: {name: X-Long, value: {regex: "end$"}}}}\n')
    assert _outcome(config, _facts(headers={"x-long": ("x" * (MAX_HEADER_CHARS - 3) + "end",)})).matched == ("h",)
    assert _outcome(config, _facts(headers={"x-long": ("x" * MAX_HEADER_CHARS + "end",)})).matched == ()


def test_each_long_text_is_casefolded_once_per_mail() -> None:
    config = _config("""\
        - {name: one, match: {body: "alpha"}}
        - {name: two, match: {body: "beta"}}
        """)
    facts = _facts(body="Alpha and BETA")
    assert evaluate(config.queue("SUPPORT").rules, facts).matched == ("one", "two")  # type: ignore[union-attr]
    assert list(facts._folded) == ["body"]


# -- in the router --------------------------------------------------------------


def _inbound(raw: bytes, mailbox: str = "support@example.com", **extra: Any) -> dict[str, Any]:
    return {"id": "imap:x:1:7", "mailbox": mailbox, "source": "imap", "uidvalidity": 1, "uid": 7,
            "received_at": datetime(2026, 11, 1, tzinfo=timezone.utc), "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(), "raw": raw, "blob_ref": None, **extra}


def _mail(subject: str = "Invoice 12 is wrong", body: str = "Please fix invoice 12.", extra: str = "",
          sender: str = "Carol <carol@bigcorp.test>") -> bytes:
    return (f"From: {sender}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <m1@bigcorp.test>\r\n{extra}\r\n{body}\r\n").encode()


ROUTED = """\
    - name: vip-customers
      match: {from: "@bigcorp.test", header: {name: X-Priority, value: {regex: "^1"}}}
      set: {type: incident, components: [billing], assignee: ann@example.com, priority: high, tags: [vip]}
    - name: invoices
      match: {body: {regex: "invoice \\\\d+"}}
      set: {queue: BILLING, tags: [invoice]}
    - name: spam
      match: {header: {name: X-Spam-Flag, value: "yes"}}
      drop: true
    """


def test_a_new_mail_carries_what_the_rules_set() -> None:
    raw = _mail(extra="X-Priority: 1 (Highest)\r\n")
    c = route(_inbound(raw), raw, _config(ROUTED)).command
    assert (c["action"], c["queue"], c["new_ticket_queue"]) == ("create", "SUPPORT", "BILLING")
    assert (c["ticket_type"], c["components"], c["priority"], c["tags"]) == (
        "incident", ["web", "billing"], "high", ["vip", "invoice"])
    assert (c["assignee"], c["assignee_rule"], c["matched_rules"]) == (
        "ann@example.com", "vip-customers", ["vip-customers", "invoices"])
    assert c["matched_rule"] == "mailbox:support@example.com" and c["reason"] is None


def test_a_mail_no_rule_matched_carries_the_defaults() -> None:
    raw = _mail(subject="hello", body="hello", sender="dan@customer.test")
    c = route(_inbound(raw), raw, _config(ROUTED)).command
    assert {k: c[k] for k in ("ticket_type", "components", "new_ticket_queue", "assignee", "assignee_rule",
                              "priority", "tags", "matched_rules")} == {
        "ticket_type": "question", "components": ["web"], "new_ticket_queue": None, "assignee": None,
        "assignee_rule": None, "priority": None, "tags": [], "matched_rules": []}


def test_a_dropped_mail_is_rejected_with_the_rule_as_its_reason_code_and_kept() -> None:
    raw = _mail(extra="X-Spam-Flag: YES\r\nContent-Type: text/plain\r\n")
    routed = route(_inbound(raw), raw, _config(ROUTED))
    c = routed.command
    assert c["action"] == "reject" and c["matched_rules"] == ["invoices", "spam"]
    assert c["reason"] == "spam: dropped by routing rule spam of queue SUPPORT"
    assert suspended.reason_code(c["reason"]) == "spam"
    assert routed.keeps_original and routed.attachments == []


def test_a_reply_may_be_dropped_and_its_new_text_alone_is_matched() -> None:
    quote = "\r\nOn Tue, 1 Dec 2026 at 10:15, Ann <support@example.com> wrote:\r\n> invoice 12 is paid\r\n"
    raw = _mail(subject="Re: paid", body="Thanks, all good." + quote,
                extra="In-Reply-To: <deskmail.1@example.com>\r\n")
    c = route(_inbound(raw), raw, _config(ROUTED)).command
    assert c["action"] == "comment" and c["quoted_from"] is not None
    assert c["matched_rules"] == []  # "invoice 12" is only in the quote
    raw = raw.replace(b"Subject:", b"X-Spam-Flag: yes\r\nSubject:")
    c = route(_inbound(raw), raw, _config(ROUTED)).command
    assert (c["action"], c["reply_only"], suspended.reason_code(c["reason"])) == ("reject", False, "spam")


def test_a_reply_keeps_its_queue_for_threading_and_names_the_move_for_a_new_ticket() -> None:
    raw = _mail(subject="Re: invoice", extra="In-Reply-To: <deskmail.1@example.com>\r\n")
    c = route(_inbound(raw), raw, _config(ROUTED)).command
    assert (c["action"], c["queue"], c["new_ticket_queue"]) == ("comment", "SUPPORT", "BILLING")


def test_a_released_dropped_mail_is_not_dropped_again() -> None:
    raw = _mail(extra="X-Spam-Flag: YES\r\n")
    inbound = _inbound(raw, release_of="imap:x:1:7", released_by="carl@example.com")
    c = route(inbound, raw, _config(ROUTED)).command
    assert (c["action"], c["id"], c["reason"]) == ("create", "release:imap:x:1:7", "released by carl@example.com")
    assert c["matched_rules"] == ["invoices", "spam"] and c["new_ticket_queue"] == "BILLING"


def test_mail_refused_for_its_own_reason_is_not_given_to_the_rules() -> None:
    config = _config('- {name: all, match: {subject: "invoice"}, set: {priority: high}}\n')
    raw = _mail(sender="support@example.com")  # deskmail's own address: a loop
    c = route(_inbound(raw), raw, config).command
    assert (c["action"], suspended.reason_code(c["reason"]), c["matched_rules"]) == ("reject", "loop", [])


def test_authenticated_is_the_routers_verdict_on_the_from() -> None:
    config = parse_text(textwrap.dedent(MEMBERS) + textwrap.dedent("""\
          sender_authentication: {trusted_authserv_ids: [mx.example.com]}
        queues:
          - key: SUPPORT
            access: [members]
            mailboxes: [{address: support@example.com, ingress: true, accept_external: true}]
            rules:
              - {name: proven, match: {authenticated: true}, set: {tags: [proven]}}
              - {name: unproven, match: {authenticated: false}, set: {tags: [unproven]}}
        """))
    passed = ("Authentication-Results: mx.example.com; dmarc=pass header.from=example.com\r\n"
              "Received: from mail.example.com (mail.example.com [192.0.2.5]) by mx.example.com with ESMTPS\r\n")
    proven = _mail(sender="ann@example.com", extra=passed)
    assert route(_inbound(proven), proven, config).command["matched_rules"] == ["proven"]
    forged = _mail(sender="ann@example.com")
    assert route(_inbound(forged), forged, config).command["matched_rules"] == ["unproven"]


def test_an_encoded_header_is_matched_decoded() -> None:
    config = _config('- {name: ru, match: {header: {name: X-Category, value: "счёт"}}}\n')
    raw = _mail(extra="X-Category: =?utf-8?b?0YHRh9GR0YI=?=\r\n")
    assert route(_inbound(raw), raw, config).command["matched_rules"] == ["ru"]


@pytest.mark.parametrize("over_limit", ["note", "suspend"])
def test_the_rules_come_after_the_size_limits(over_limit: str) -> None:
    config = parse_text(textwrap.dedent(MEMBERS) + SUPPORT.replace(
        "    rules:\n", f"    limits: {{max_message_bytes: 1024, over_limit: {over_limit}}}\n    rules:\n")
        + '      - {name: big, match: {body: {regex: "^Please"}}, set: {tags: [big]}}\n' + BILLING)
    raw = _mail(body="Please fix invoice 12." + " padding" * 200)
    c = route(_inbound(raw), raw, config).command
    if over_limit == "suspend":  # suspended as too large: that reason stays
        assert (c["action"], suspended.reason_code(c["reason"]), c["matched_rules"]) == ("reject", "too_large", [])
    else:  # the rules saw the text as sent, not the note put in front of it
        assert c["text"].startswith("[deskmail:") and c["matched_rules"] == ["big"]
