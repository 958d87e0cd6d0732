"""Authentication-Results parsing, the trust border and the From proof (pure)."""

from __future__ import annotations

import pytest

from services.router.mailparse import parse as parse_mail
from services.router.senderauth import AuthResults, AuthResultsError, MethodResult, counted_results, parse, verify

TRUSTED = ("mx.example.com",)
BORDER = ("received", "from mail.sender.test (mail.sender.test [198.51.100.2]) by mx.example.com with ESMTPS id 1")


def ar(value: str) -> tuple[str, str]:
    return ("authentication-results", value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mx.example.com; none", AuthResults("mx.example.com", ())),
        ("MX.Example.COM. 1; none", AuthResults("mx.example.com", ())),
        ('"mx.example.com"; spf=pass smtp.mailfrom=a@example.com',
         AuthResults("mx.example.com", (MethodResult("spf", "pass", (("smtp.mailfrom", "a@example.com"),)),))),
        ("mx.example.com;\t dkim=pass (good signature) header.d=example.com header.i=@example.com header.s=s1;"
         " spf=fail (ip not listed) smtp.mailfrom=b@other.test; dmarc=pass (p=REJECT) header.from=example.com",
         AuthResults("mx.example.com", (
             MethodResult("dkim", "pass", (("header.d", "example.com"), ("header.i", "@example.com"),
                                           ("header.s", "s1"))),
             MethodResult("spf", "fail", (("smtp.mailfrom", "b@other.test"),)),
             MethodResult("dmarc", "pass", (("header.from", "example.com"),)),
         ))),
        ("mx.example.com; DKIM/1 = PASS reason=\"good (really)\" header.b=ab+c/d=;",
         AuthResults("mx.example.com", (MethodResult("dkim", "pass", (("reason", "good (really)"), ("header.b", "ab+c/d="))),))),
        ("mx.example.com (the (nested) comment); dmarc=pass header.from=example.com",
         AuthResults("mx.example.com", (MethodResult("dmarc", "pass", (("header.from", "example.com"),)),))),
    ],
)
def test_parse(value, expected):
    assert parse(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",                                        # no authserv-id
        "mx.example.com",                          # neither results nor none
        "mx.example.com 2; none",                  # a version this parser does not know
        "mx.example.com; dmarc",                   # method without result
        "mx.example.com; dmarc=pass header.from",  # property without value
        "mx.example.com; dmarc=pass from=example.com",  # neither reason nor ptype.property
        "mx.example.com; dmarc=pass (unclosed header.from=example.com",
        "mx.example.com; dmarc=pass) header.from=example.com",
        'mx.example.com; dmarc=pass reason="open',
        "mx.example.com; ; dmarc=pass",            # an empty result between two
        "mx.example.com extra words; none",
    ],
)
def test_parse_refuses_what_it_cannot_read_strictly(value):
    with pytest.raises(AuthResultsError):
        parse(value)


PASS = ar("mx.example.com; dmarc=pass header.from=example.com")
FORGED = ar("mx.example.com; dmarc=pass header.from=example.com")  # same text, written by the sender


@pytest.mark.parametrize(
    ("trace", "counted"),
    [
        ([PASS, BORDER], 1),                                     # the trusted server's own field
        ([BORDER, PASS], 1),                                     # written just below its hop (Gmail's order)
        ([BORDER, ar("mx.example.com; dmarc=fail header.from=example.com"), FORGED], 1),  # only the topmost
        ([BORDER, ("received", "from mail.sender.test by relay.sender.test"), FORGED], 0),  # below another hop
        ([PASS, BORDER, FORGED], 1),                             # written above its hop: nothing below counts
        ([ar("mx.example.com; dmarc=fail header.from=example.com"), BORDER, FORGED], 1),
        ([FORGED], 0),                                           # no trusted hop at all: nothing counts
        ([FORGED, ("received", "from x by relay.other.test")], 0),
        ([ar("relay.other.test; dmarc=pass header.from=example.com"), BORDER], 0),  # untrusted authserv-id
        ([("received", "from a by deskmail.local"), PASS, BORDER], 1),  # hops above the border are fine
        ([PASS, ("received", "from a (helo by mx.example.com) by relay.test"), BORDER], 1),  # liberal match stops early
        ([("received", "from a (helo by mx.example.com) by relay.test"), PASS, BORDER], 1),  # ... then the topmost below
        ([ar("mx.example.com; dmarc=pass (broken"), BORDER], 0),  # unreadable: ignored
        ([ar("MX.EXAMPLE.COM.; dmarc=pass"), ("received", "from a by MX.Example.Com. with SMTP"), FORGED], 1),
    ],
)
def test_trust_border(trace, counted):
    assert len(counted_results(trace, TRUSTED)) == counted


def test_below_the_hop_only_the_servers_own_topmost_field_counts():
    real = ar("mx.example.com; dmarc=fail header.from=example.com")
    [result] = counted_results([BORDER, real, FORGED], TRUSTED)
    assert (result.method, result.result) == ("dmarc", "fail")  # the sender's dmarc=pass below it is ignored


@pytest.mark.parametrize(
    ("results", "from_email", "authenticated", "reason"),
    [
        ("dmarc=pass header.from=example.com", "alice@example.com", True, "dmarc_pass"),
        ("dmarc=pass", "alice@example.com", True, "dmarc_pass"),
        ("dmarc=pass header.from=other.test", "alice@example.com", False, "no_passing_result"),
        ("dmarc=fail header.from=example.com", "alice@example.com", False, "no_passing_result"),
        ("dkim=pass header.d=example.com", "alice@example.com", True, "aligned_dkim_pass"),
        ("dkim=pass header.d=Example.COM", "alice@eu.example.com", True, "aligned_dkim_pass"),  # parent domain
        ("dkim=pass header.d=eu.example.com", "alice@example.com", False, "no_passing_result"),  # child: not
        ("dkim=pass header.d=badexample.com", "alice@example.com", False, "no_passing_result"),
        ("dkim=pass header.d=attacker.test", "alice@example.com", False, "no_passing_result"),
        ("dkim=pass header.d=com", "alice@example.com", False, "no_passing_result"),  # a TLD aligns with nothing
        ("dkim=pass", "alice@example.com", False, "no_passing_result"),
        ("dkim=fail header.d=example.com", "alice@example.com", False, "no_passing_result"),
        ("spf=pass smtp.mailfrom=alice@example.com", "alice@example.com", False, "no_passing_result"),
        ("dkim=pass header.d=attacker.test; dmarc=pass header.from=example.com", "alice@example.com",
         True, "dmarc_pass"),
        ("none", "alice@example.com", False, "no_trusted_results"),
    ],
)
def test_verify(results, from_email, authenticated, reason):
    trace = [ar(f"mx.example.com; {results}"), BORDER]
    verdict = verify(trace, from_email, True, TRUSTED)
    assert (verdict.authenticated, verdict.reason) == (authenticated, reason)


def test_an_address_taken_from_sender_or_reply_to_proves_nothing():
    raw = (b"Sender: alice@example.com\r\nReply-To: alice@example.com\r\nSubject: x\r\n"
           b"Authentication-Results: mx.example.com; dmarc=pass header.from=example.com\r\n"
           b"Received: from a by mx.example.com\r\n\r\nbody\r\n")
    mail = parse_mail(raw)
    assert (mail.from_addr.email, mail.from_header) == ("alice@example.com", False)
    assert verify(mail.trace, mail.from_addr.email, mail.from_header, TRUSTED).reason == "no_from_header"


def test_the_parser_hands_over_the_trace_top_down_and_unfolded():
    raw = (b"Authentication-Results: mx.example.com;\r\n\tdmarc=pass header.from=example.com\r\n"
           b"Received: from a\r\n by mx.example.com; Tue, 3 Mar 2026 10:00:00 +0000\r\n"
           b"From: alice@example.com\r\nAuthentication-Results: mx.example.com; dkim=pass header.d=example.com\r\n"
           b"Subject: x\r\n\r\nbody\r\n")
    mail = parse_mail(raw)
    assert mail.from_header
    assert mail.trace == (
        ("authentication-results", "mx.example.com;\tdmarc=pass header.from=example.com"),
        ("received", "from a by mx.example.com; Tue, 3 Mar 2026 10:00:00 +0000"),
        ("authentication-results", "mx.example.com; dkim=pass header.d=example.com"),
    )
    assert [r.method for r in counted_results(mail.trace, TRUSTED)] == ["dmarc"]
