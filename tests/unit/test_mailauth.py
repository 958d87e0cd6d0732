"""The pure parts of the ingress's own DKIM/SPF/DMARC verdict (services/fetcher/mailauth.py)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from services.fetcher import mailauth
from services.fetcher.mailauth import DkimResult, DnsError, Verdict


def _zone(records: dict[str, list[bytes]]) -> mailauth.TxtLookup:
    def lookup(name: str) -> list[bytes]:
        if name == "_dmarc.broken.test":
            raise DnsError("timeout")
        return records.get(name, [])
    return lookup


ZONE = _zone({"_dmarc.example.org": [b"v=DMARC1; p=quarantine"], "_dmarc.strict.test": [b"v=DMARC1; p=reject; adkim=s"]})


@pytest.mark.parametrize(
    ("from_domain", "dkims", "spf", "spf_domain", "expected"),
    [
        ("example.org", [DkimResult("pass", "example.org", "s")], "none", "", ("pass", "quarantine")),
        ("example.org", [DkimResult("pass", "mail.example.org", "s")], "none", "", ("pass", "quarantine")),  # relaxed
        ("example.org", [DkimResult("pass", "attacker.test", "s")], "none", "", ("fail", "quarantine")),
        ("example.org", [DkimResult("fail", "example.org", "s")], "pass", "bounces.example.org", ("pass", "quarantine")),
        ("example.org", [], "pass", "elsewhere.test", ("fail", "quarantine")),
        ("strict.test", [DkimResult("pass", "mail.strict.test", "s")], "none", "", ("fail", "reject")),
        ("nodmarc.test", [DkimResult("pass", "nodmarc.test", "s")], "none", "", ("none", "")),
        ("broken.test", [DkimResult("pass", "broken.test", "s")], "none", "", ("temperror", "")),
        ("", [], "none", "", ("permerror", "")),
    ],
)
def test_dmarc_passes_only_with_an_aligned_pass(from_domain, dkims, spf, spf_domain, expected):
    assert mailauth.check_dmarc(from_domain, dkims, spf, spf_domain, ZONE) == expected


def test_a_mail_without_signatures_is_dkim_none_and_nothing_is_looked_up():
    asked: list[str] = []
    assert mailauth.check_dkim(b"From: a@example.org\r\n\r\nhi\r\n", lambda name: asked.append(name) or []) == ()
    assert asked == []


def test_a_hostile_signature_is_permerror_and_never_raises():
    raw = b"DKIM-Signature: v=1; garbage\r\nFrom: a@example.org\r\n\r\nhi\r\n"
    assert [r.result for r in mailauth.check_dkim(raw, lambda name: [])] == ["permerror"]


def test_claims_of_deskmails_id_are_renamed_and_others_kept():
    raw = (b"Authentication-Results: (forged) Deskmail.Example.com; dmarc=pass\r\n continued\r\n"
           b"Authentication-Results: mx.upstream.test; dmarc=pass\r\n"
           b"Subject: Authentication-Results: deskmail.example.com; x\r\n\r\n"
           b"Authentication-Results: deskmail.example.com; in the body\r\n")
    out = mailauth.remove_claims(raw, "deskmail.example.com")
    assert out == raw.replace(b"Authentication-Results: (forged)",
                              b"X-Deskmail-Removed-Authentication-Results: (forged)", 1)


def test_client_values_cannot_break_the_fields():
    verdict = Verdict((DkimResult("pass", "evil.test\r\nX-Injected: 1", "s;x"),), "pass", "", "pass", "example.org", "none")
    out = mailauth.trace_fields(verdict, "deskmail.example.com", "192.0.2.1", "helo\r\nBcc: x@y",
                                "a@b.test\r\nX: 1", now=datetime(2026, 12, 3, tzinfo=timezone.utc))
    lines = out.split(b"\r\n")
    assert lines[0] == b"Authentication-Results: deskmail.example.com;"
    assert all(line.startswith(b" ") for line in lines[1:4] + lines[5:6])
    assert lines[4].startswith(b"Received: from heloBcc:x@y ([192.0.2.1])")
    assert b"X-Injected" not in out.replace(b"X-Injected:1", b"") and out.endswith(b"+0000\r\n")
    assert out.count(b"\r\n") == 6


def test_the_from_domain_needs_exactly_one_from_address():
    assert mailauth._from_domain(b"From: A <a@Example.ORG>\r\n\r\n") == "example.org"
    assert mailauth._from_domain(b"From: a@one.test, b@two.test\r\n\r\n") == ""
    assert mailauth._from_domain(b"From: a@one.test\r\nFrom: b@two.test\r\n\r\n") == ""
