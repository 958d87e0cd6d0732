"""The shared mail rules: ticket-key grammar, reply subjects, Message-IDs,
blocked recipients, signatures, header text."""

from __future__ import annotations

import textwrap

import pytest

from services.common.config import ConfigError, Secret, parse_text
from services.common.mailrules import (
    QUEUE_KEY_RULE,
    AddressError,
    HeaderTextError,
    UnknownSignature,
    blocked_recipients,
    cap_text,
    check_header_text,
    find_ticket_key,
    format_ticket_key,
    new_message_id,
    is_msg_id,
    is_queue_key,
    parse_ticket_key,
    signature_for,
    strip_reply_prefixes,
    subject_for,
    synthetic_message_id,
    trim_references,
)

# -- queue keys ----------------------------------------------------------------


@pytest.mark.parametrize(("key", "valid"), [
    ("SUPPORT", True),
    ("S", True),
    ("IT_OPS", True),
    ("Q2", True),
    ("A" * 32, True),
    ("A" * 33, False),
    ("", False),
    ("support", False),  # configured keys are upper case; subjects match in any case
    ("Support", False),
    ("2ND", False),
    ("_X", False),
    ("IT-OPS", False),  # a hyphen would make SUPPORT-12 ambiguous
    ("IT OPS", False),
    ("ÄRGER", False),
    ("SUPPORT\n", False),
])
def test_queue_key(key: str, valid: bool) -> None:
    assert is_queue_key(key) is valid


def test_config_validates_queue_keys_with_the_same_rule() -> None:
    with pytest.raises(ConfigError) as info:
        parse_text("queues:\n  - key: IT-OPS\n")
    assert [str(p) for p in info.value.problems] == [f"line 2: queues[0].key: {QUEUE_KEY_RULE}"]


# -- ticket keys -----------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("SUPPORT-12", ("SUPPORT", 12)),
    ("support-012", ("SUPPORT", 12)),
    (" IT_OPS-3 ", ("IT_OPS", 3)),
    ("SUPPORT-0", ("SUPPORT", 0)),
])
def test_parse_ticket_key(text: str, expected: tuple[str, int]) -> None:
    assert parse_ticket_key(text) == expected
    assert format_ticket_key(*expected) == f"{expected[0]}-{expected[1]}"


@pytest.mark.parametrize("text", ["SUPPORT", "SUPPORT-", "-12", "IT-OPS-3", "SUPPORT-1x", "[SUPPORT-1]",
                                  "SUPPORT-" + "1" * 19, "ſUPPORT-1"])
def test_parse_ticket_key_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a ticket key"):
        parse_ticket_key(text)


QUEUES = ("SUPPORT", "IT_OPS", "Billing")


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("RE: [SUPPORT-3] Printer on floor 3", "SUPPORT-3"),
        ("[support-12] lower case", "SUPPORT-12"),
        ("Printer SUPPORT-7 is back", "SUPPORT-7"),
        ("Question about SUPPORT-7, again", "SUPPORT-7"),
        ("Printer support-7 is back", "SUPPORT-7"),
        ("[SUPPORT-007] leading zeros", "SUPPORT-7"),
        ("[IT_OPS-5] underscore in the queue key", "IT_OPS-5"),
        ("billing-44: invoice", "BILLING-44"),
        ("Re: see SUPPORT-1 and [SUPPORT-2]", "SUPPORT-2"),  # bracketed form wins
        ("SUPPORT-1 and SUPPORT-2", "SUPPORT-1"),  # else the first
        ("[SUPPORT-1] [BILLING-2]", "SUPPORT-1"),
        ("[ SUPPORT-9 ] spaced brackets", "SUPPORT-9"),
        ("[JIRA-1] then SUPPORT-4", "SUPPORT-4"),  # unknown bracketed key is skipped
        ("(SUPPORT-4)", "SUPPORT-4"),
        ("SUPPORT-4.", "SUPPORT-4"),
        ("AW: WG: Fwd: [SUPPORT-5] Drucker", "SUPPORT-5"),
        ("Ответ: [SUPPORT-6] Принтер", "SUPPORT-6"),
        ("Принтер SUPPORT-6 снова", "SUPPORT-6"),
        ("回复：[SUPPORT-8]打印机", "SUPPORT-8"),
        ("No key here", None),
        ("[HR-3] unknown queue", None),
        ("XSUPPORT-3 is not a key", None),  # inside a word
        ("SUPPORT-3x is not a key", None),
        ("ÄSUPPORT-3 is not a key", None),  # a letter is a letter in any script
        ("SUPPORT-3ä is not a key", None),
        ("IT-SUPPORT-3 is not a key", None),  # inside a hyphenated chain
        ("SUPPORT-3-4 is not a key", None),
        ("SUPPORT_3 is not a key", None),
        ("SUPPORT-", None),
        ("SUPPORT-" + "1" * 19, None),
        ("", None),
    ],
)
def test_find_ticket_key(subject: str, expected: str | None) -> None:
    assert find_ticket_key(subject, QUEUES) == expected


def test_find_ticket_key_without_queues_finds_nothing() -> None:
    assert find_ticket_key("[SUPPORT-3]", []) is None


def test_a_key_outside_the_queue_key_rule_is_never_found() -> None:
    # Pinned when the router's looser rule (which found "IT-OPS-5" for a queue
    # "IT-OPS") gave way to the config's: such a queue cannot be configured.
    assert find_ticket_key("[IT-OPS-5] hyphenated", ["IT-OPS"]) is None
    assert find_ticket_key("[IT-OPS-5] hyphenated", ["OPS"]) is None


def test_key_letters_are_ascii_and_digits_any_script() -> None:
    # "ſ" (long s) upper-cases to "S"; the router's old rule took "ſupport-3" for SUPPORT-3.
    assert find_ticket_key("ſupport-3", QUEUES) is None
    assert find_ticket_key("[ſUPPORT-3]", QUEUES) is None
    assert find_ticket_key("KELVIN \u212aSUPPORT-3", QUEUES) is None  # Kelvin sign K, a letter
    assert find_ticket_key("SUPPORT-１２ full-width digits", QUEUES) == "SUPPORT-12"
    assert find_ticket_key("[SUPPORT-١٢]", QUEUES) == "SUPPORT-12"


# -- subjects ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: Printer", "Printer"),
        ("RE: [SUPPORT-3] Printer", "[SUPPORT-3] Printer"),
        ("Re: RE: Fwd: FW: Printer", "Printer"),
        ("AW: WG: Drucker", "Drucker"),
        ("Ответ: НА: Принтер", "Принтер"),
        ("Re[2]: Printer", "Printer"),
        ("Re(3):Printer", "Printer"),
        ("SV: Skrivare", "Skrivare"),
        ("回复：打印机", "打印机"),
        ("  re :  spaced  ", "spaced"),
        ("Printer: Re: broken", "Printer: Re: broken"),  # only leading prefixes
        ("Refund request", "Refund request"),
        ("Review: new policy", "Review: new policy"),
        ("Re:", ""),
    ],
)
def test_strip_reply_prefixes(subject: str, expected: str) -> None:
    assert strip_reply_prefixes(subject) == expected



@pytest.mark.parametrize(("original", "expected"), [
    ("Invoice", "Re: [SUPPORT-12] Invoice"),
    ("Re: Invoice", "Re: [SUPPORT-12] Invoice"),
    ("Re: [SUPPORT-12] Invoice", "Re: [SUPPORT-12] Invoice"),
    ("RE: [SUPPORT-12] AW: Re: Fwd: Invoice", "Re: [SUPPORT-12] Invoice"),
    ("Re[2]: [support-012] Invoice", "Re: [SUPPORT-12] Invoice"),
    ("Invoice [SUPPORT-12]", "Re: [SUPPORT-12] Invoice"),
    ("Ответ: Отв: [SUPPORT-12] Счёт", "Re: [SUPPORT-12] Счёт"),
    ("Re: [BILLING-3] moved ticket", "Re: [SUPPORT-12] moved ticket"),
    ("Order [ABC-1] is broken", "Re: [SUPPORT-12] Order [ABC-1] is broken"),
    ("  Re:   spaced    out  ", "Re: [SUPPORT-12] spaced out"),
    ("", "Re: [SUPPORT-12]"),
    ("Re:", "Re: [SUPPORT-12]"),
])
def test_subject_for(original: str, expected: str) -> None:
    assert subject_for("SUPPORT-12", original) == expected
    assert subject_for("SUPPORT-12", subject_for("SUPPORT-12", original)) == expected  # stable


@pytest.mark.parametrize("original", [
    "Invoice", "Re: Invoice", "RE: [SUPPORT-12] AW: Fwd: Invoice", "[support-012] Invoice", "Order [ABC-1] is broken",
    "Re: [BILLING-3] moved ticket", "see BILLING-3 and SUPPORT-4", "Ответ: Счёт SUPPORT-99", "回复：打印机", "", "Re:",
    "[" * 3 + "]" * 3, "SUPPORT-12 SUPPORT-12",
])
@pytest.mark.parametrize("key", ["SUPPORT-12", "SUPPORT-1", "BILLING-7", "IT_OPS-123456789012345678"])
def test_subject_for_round_trip(key: str, original: str) -> None:
    """A subject deskmail writes gives the same key back to the router, also after the customer's Re:/AW:."""
    subject = subject_for(key, original)
    queues = ["SUPPORT", "BILLING", "IT_OPS", "ABC"]
    assert find_ticket_key(subject, queues) == key
    for prefix in ("Re: ", "AW: ", "Fwd: ", "Ответ: "):
        assert find_ticket_key(prefix + subject, queues) == key
        assert subject_for(key, prefix + subject) == subject  # answering an answer changes nothing


def test_subject_for_writes_the_key_in_its_canonical_form() -> None:
    assert subject_for("support-012", "Invoice") == "Re: [SUPPORT-12] Invoice"
    with pytest.raises(ValueError, match="is not a ticket key"):
        subject_for("IT-OPS-5", "Invoice")


def test_subject_for_leaves_markers_that_are_not_ticket_keys() -> None:
    # Pinned: the sender's old rule took any length of letters for a leading marker;
    # a marker longer than a queue key can be is the customer's text.
    long_marker = "[" + "A" * 33 + "-1]"
    assert subject_for("SUPPORT-12", f"{long_marker} x") == f"Re: [SUPPORT-12] {long_marker} x"
    assert subject_for("SUPPORT-12", "[IT-OPS-5] x") == "Re: [SUPPORT-12] [IT-OPS-5] x"


# -- Message-IDs ----------------------------------------------------------------

KEY = Secret("unit-test-message-id-key", "test")


def test_new_message_id() -> None:
    # The token's own properties are tested in test_message_id.py.
    def local_and_domain(outbound_id: str, from_address: str) -> tuple[str, str]:
        local, _, domain = new_message_id(outbound_id, from_address, key=KEY, ticket="SUPPORT-1").partition("@")
        return local.rsplit(".", 2)[0], domain

    assert local_and_domain("out-1", "support@example.com") == ("deskmail.out-1", "example.com")
    assert local_and_domain("out-1", "Support@EXAMPLE.com") == ("deskmail.out-1", "example.com")
    assert local_and_domain("a/b c.ü", "x@пример.рф") == ("deskmail.a=2Fb=20c=2E=C3=BC", "xn--e1afmkfd.xn--p1ai")
    assert local_and_domain("a.b", "x@example.com") != local_and_domain("a_b", "x@example.com")
    with pytest.raises(AddressError, match="is not a valid domain name"):
        new_message_id("out-1", "x@пример..рф", key=KEY, ticket=None)


def test_synthetic_message_id_is_stable_and_lower_case() -> None:
    digest = "AB" * 32
    assert synthetic_message_id(digest) == "ab" * 32 + "@deskmail.invalid"
    assert synthetic_message_id(digest) == synthetic_message_id(digest.lower())


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "a" * 63, "a" * 65])
def test_synthetic_message_id_rejects_non_digests(bad: str) -> None:
    with pytest.raises(ValueError, match="not a SHA-256 hex digest"):
        synthetic_message_id(bad)


# -- recipients and signatures -----------------------------------------------------

CONFIG_TEXT = textwrap.dedent("""\
    organization:
      members:
        - {email: alice@example.com}
        - {email: bob@example.com}
    queues:
      - key: INTERNAL
        mailboxes:
          - address: it@example.com
            ingress: true
            signatures: [{alias: IT desk, text: "-- IT"}, {alias: Alice at IT}]
      - key: SUPPORT
        allow_outbound_mail: true
        mailboxes:
          - {address: support@example.com, ingress: true}
    """)
CONFIG = parse_text(CONFIG_TEXT)


@pytest.mark.parametrize(("mailbox", "emails", "blocked"), [
    ("it@example.com", [], []),
    ("it@example.com", ["alice@example.com", "BOB@Example.com"], []),
    ("it@example.com", ["ALICE@example.com", "carol@customer.test"], ["carol@customer.test"]),
    ("it@example.com", ["dan@customer.test", "alice@example.com", "Carol@Customer.test"],
     ["dan@customer.test", "Carol@Customer.test"]),  # in the given order, as given
    ("support@example.com", ["carol@customer.test", "alice@example.com"], []),  # allow_outbound_mail
])
def test_blocked_recipients(mailbox: str, emails: list[str], blocked: list[str]) -> None:
    box = CONFIG.mailbox(mailbox)
    assert box is not None
    assert blocked_recipients(CONFIG, box, emails) == blocked


@pytest.mark.parametrize(("mailbox", "alias", "expected"), [
    ("it@example.com", None, "IT desk"),  # default: the mailbox's first
    ("it@example.com", "", "IT desk"),  # an empty form field means the default too
    ("it@example.com", "IT desk", "IT desk"),
    ("it@example.com", "Alice at IT", "Alice at IT"),
    ("support@example.com", None, None),  # no signatures
    ("support@example.com", "", None),
])
def test_signature_for(mailbox: str, alias: str | None, expected: str | None) -> None:
    box = CONFIG.mailbox(mailbox)
    assert box is not None
    signature = signature_for(box, alias)
    assert (signature.alias if signature else None) == expected


@pytest.mark.parametrize(("mailbox", "alias", "message"), [
    ("it@example.com", "it desk", "mailbox it@example.com has no signature 'it desk' (it has: 'IT desk', 'Alice at IT')"),
    ("support@example.com", "Nobody", "mailbox support@example.com has no signature 'Nobody' (it has: none)"),
])
def test_unknown_signature_names_the_ones_there_are(mailbox: str, alias: str, message: str) -> None:
    box = CONFIG.mailbox(mailbox)
    assert box is not None
    with pytest.raises(UnknownSignature) as info:
        signature_for(box, alias)
    assert str(info.value) == message and isinstance(info.value, ValueError)


# -- header text and msg-ids ---------------------------------------------------


@pytest.mark.parametrize("value", [
    "Carol Customer", "carol@customer.test", "Re: [SUPPORT-12] Счёт", "tab\tinside", "", "emoji 🎉",
])
def test_one_line_header_text_is_returned_as_it_is(value: str) -> None:
    assert check_header_text("To", value) == value


@pytest.mark.parametrize(("char", "named"), [
    ("\n", "a line break (U+000A)"),
    ("\r", "a line break (U+000D)"),
    ("\r\n", "a line break (U+000D)"),
    ("\v", "a line break (U+000B)"),
    ("\f", "a line break (U+000C)"),
    ("\x1c", "a line break (U+001C)"),
    ("\x1d", "a line break (U+001D)"),
    ("\x1e", "a line break (U+001E)"),
    ("\x85", "a line break (U+0085)"),
    ("\u2028", "a line break (U+2028)"),
    ("\u2029", "a line break (U+2029)"),
    ("\x00", "a NUL character"),
])
def test_every_line_break_and_nul_is_refused(char: str, named: str) -> None:
    value = f"carol@customer.test{char}Bcc: all@customer.test"
    assert len(value.splitlines()) > 1 or char == "\x00"
    with pytest.raises(HeaderTextError) as info:
        check_header_text("To", value)
    assert str(info.value) == f"To {value!r} contains {named}; header text must be one line"
    assert isinstance(info.value, ValueError)


def test_every_line_break_python_knows_is_in_the_rule() -> None:
    breaks = [chr(c) for c in range(0x110000) if len(f"a{chr(c)}b".splitlines()) > 1]
    for char in breaks:
        with pytest.raises(HeaderTextError):
            check_header_text("Subject", f"a{char}b")


def test_a_long_refused_value_is_shown_shortened() -> None:
    with pytest.raises(HeaderTextError) as info:
        check_header_text("Subject", "x" * 5000 + "\n")
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(("value", "valid"), [
    ("CAF1234.5678@mail.example.com", True),
    ("deskmail.out-1=2E@example.com", True),
    ("no-at-sign", True),
    ("a@[192.0.2.1]", True),
    ("a" * 980, True),
    ("a" * 981, False),
    ("", False),
    ("пример@example.org", False),
    ("a b@x.org", False),
    ("a\tb@x.org", False),
    ("a\r\nb@x.org", False),
    ("a\x00b@x.org", False),
    ("a\x7fb@x.org", False),
    ("<a@x.org>", False),
    ("a>b@x.org", False),
])
def test_is_msg_id(value: str, valid: bool) -> None:
    assert is_msg_id(value) is valid


@pytest.mark.parametrize(("count", "kept"), [
    (0, []),
    (3, [0, 1, 2]),
    (50, list(range(50))),
    (51, [0, *range(2, 51)]),
    (5000, [0, *range(4951, 5000)]),
])
def test_trim_references_keeps_the_first_and_the_last(count: int, kept: list[int]) -> None:
    assert trim_references([f"r{n}@x" for n in range(count)]) == [f"r{n}@x" for n in kept]


def test_cap_text() -> None:
    assert cap_text("short", 255) == "short"
    assert cap_text("x" * 255, 255) == "x" * 255
    assert cap_text("x" * 256, 255) == "x" * 254 + "\u2026"
    assert cap_text("word " * 100, 12) == "word word w\u2026"
    assert cap_text("word " * 100, 11) == "word word\u2026"  # no space before the ellipsis
