"""The ingress as the receiving server: DKIM, SPF and DMARC checked by deskmail itself.

For an ``ingress: true`` mailbox that the Internet reaches directly, no upstream server
has checked anything, so deskmail does (RFC 6376, RFC 7208, RFC 7489) and writes its
verdict the way any receiving server does: an ``Authentication-Results`` field under its
own authserv-id (``ingress.authserv_id``) directly above its own ``Received`` field, both
prepended to the stored mail. The router trusts that id for mail with source ``smtp``
(services.router.route), and services.router.senderauth reads the results above that
Received hop. Fields that arrive already claiming deskmail's id are forgeries (RFC 8601
section 5) and are renamed, so they can never be mistaken for deskmail's own.

Blocking (DNS): run it in the ingress's delivery threads, never on the event loop. Every
lookup is bounded by ``timeout``; a DNS failure gives ``temperror``, never an exception.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import dkim
import dns.exception
import dns.resolver
import spf

REMOVED_FIELD = b"X-Deskmail-Removed-Authentication-Results"

# Signatures checked per mail, each one key lookup: a sender adding hundreds would
# otherwise hold a delivery thread for hundreds of DNS timeouts. With the SPF budget
# and the DMARC lookup, 3 keeps the worst case (5 timeouts) under the ingress's
# 30 s wait for the broker. Further signatures are not reported.
MAX_SIGNATURES = 3

# Anything from the client (HELO name, MAIL FROM, a signature's d=) goes into a header
# field: keep only characters that cannot break the field or its property syntax.
_UNSAFE = re.compile(r"[^A-Za-z0-9.@_+=:\[\]-]")
_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.ASCII)


class DnsError(Exception):
    """A lookup that did not finish: timeout, SERVFAIL, no server answered."""


TxtLookup = Callable[[str], list[bytes]]


def resolver(servers: Sequence[str], timeout: float) -> dns.resolver.Resolver:
    """A resolver bounded by ``timeout`` per lookup; ``servers`` (``host`` or ``host:port``) or the system's."""
    res = dns.resolver.Resolver(configure=not servers)
    if servers:
        res.nameservers = [s.rpartition(":")[0] if _has_port(s) else s for s in servers]
        ports = {int(s.rpartition(":")[2]) for s in servers if _has_port(s)}
        if ports:
            res.port = ports.pop()  # dnspython has one port per resolver
    res.lifetime = timeout
    res.timeout = timeout
    return res


def _has_port(server: str) -> bool:
    return server.count(":") == 1  # an IPv6 address without a port has several colons


def txt_lookup(res: dns.resolver.Resolver) -> TxtLookup:
    """TXT strings of a name (each record's strings joined); [] when the name or the record is absent."""

    def lookup(name: str) -> list[bytes]:
        try:
            answer = res.resolve(name, "TXT", raise_on_no_answer=False, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsError(f"{type(exc).__name__} looking up {name}") from exc
        if answer.rrset is None:
            return []
        return [b"".join(r.strings) for r in answer.rrset]

    return lookup


@dataclass(frozen=True)
class DkimResult:
    result: str  # pass, fail, temperror, permerror
    domain: str
    selector: str


@dataclass(frozen=True)
class Verdict:
    dkim: tuple[DkimResult, ...]
    spf: str
    spf_domain: str
    dmarc: str
    from_domain: str
    policy: str


# ---------------------------------------------------------------- the checks


def check_dkim(raw: bytes, lookup: TxtLookup) -> tuple[DkimResult, ...]:
    """One result per DKIM-Signature field, top-down."""
    count = sum(1 for name, _ in _fields(raw) if name.lower() == b"dkim-signature")
    errors: list[str] = []

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        try:
            records = lookup(name.decode() if isinstance(name, bytes) else name)
        except DnsError:
            errors.append("dns")
            raise dkim.DnsTimeoutError("lookup failed") from None
        return records[0] if records else None

    results = []
    for idx in range(min(count, MAX_SIGNATURES)):
        errors.clear()
        verifier = None
        try:
            verifier = dkim.DKIM(raw)  # parses the message: hostile input can raise here too
            ok = verifier.verify(idx=idx, dnsfunc=dnsfunc)
            result = "pass" if ok else ("temperror" if errors else "fail")
        except dkim.DnsTimeoutError:
            result = "temperror"
        except dkim.ValidationError:  # after the signature parsed (d= known): the hashes do not match
            result = "fail" if verifier is not None and verifier.domain else "permerror"
        except dkim.DKIMException:
            result = "temperror" if errors else "permerror"
        except Exception:  # a hostile signature must not lose the mail: dkimpy raises odd things
            result = "permerror"
        parsed = result != "permerror" or (verifier is not None and verifier.domain)
        domain = _text(verifier.domain) if verifier is not None and parsed else ""
        selector = _text(verifier.selector) if verifier is not None and parsed else ""
        results.append(DkimResult(result, domain, selector))
    return tuple(results)


def check_spf(ip: str, mail_from: str, helo: str, timeout: float) -> str:
    """pyspf's result (pass, fail, softfail, neutral, none, temperror, permerror); it uses dnspython's default resolver."""
    try:
        result, _ = spf.check2(i=ip, s=mail_from, h=helo, querytime=timeout, timeout=timeout)
    except Exception:  # pyspf is strict about hostile input in ways it does not document
        return "permerror"
    return str(result)


def _aligned(domain: str, from_domain: str) -> bool:
    """Relaxed alignment, approximated without a public suffix list: one domain is the other or under it."""
    d, f = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    return bool(d and f) and (d == f or f.endswith("." + d) or d.endswith("." + f))


def check_dmarc(from_domain: str, dkims: Sequence[DkimResult], spf_result: str, spf_domain: str,
                lookup: TxtLookup) -> tuple[str, str]:
    """(result, policy) for the From domain: pass when an aligned DKIM or SPF pass exists.

    The record is looked up at ``_dmarc.<From domain>`` only (no fallback to the
    organizational domain, which would need a public suffix list): a subdomain
    without its own record gets ``none``.
    """
    if not from_domain:
        return "permerror", ""
    try:
        records = [r for r in lookup(f"_dmarc.{from_domain}") if r.lower().startswith(b"v=dmarc1")]
    except DnsError:
        return "temperror", ""
    if len(records) != 1:
        return ("none" if not records else "permerror"), ""
    tags = dict(
        (k.strip().lower(), v.strip().lower())
        for k, _, v in (t.partition("=") for t in records[0].decode("ascii", "replace").split(";"))
    )
    policy = tags.get("p", "none")
    strict_dkim, strict_spf = tags.get("adkim") == "s", tags.get("aspf") == "s"

    def matches(domain: str, strict: bool) -> bool:
        return domain.lower() == from_domain.lower() if strict else _aligned(domain, from_domain)

    if any(d.result == "pass" and matches(d.domain, strict_dkim) for d in dkims):
        return "pass", policy
    if spf_result == "pass" and matches(spf_domain, strict_spf):
        return "pass", policy
    return "fail", policy


def verify(raw: bytes, ip: str, helo: str, mail_from: str, lookup: TxtLookup, timeout: float) -> Verdict:
    dkims = check_dkim(raw, lookup)
    spf_domain = mail_from.rpartition("@")[2] if mail_from else helo
    spf_result = check_spf(ip, mail_from, helo, timeout)
    from_domain = _from_domain(raw)
    dmarc, policy = check_dmarc(from_domain, dkims, spf_result, spf_domain, lookup)
    return Verdict(dkims, spf_result, spf_domain, dmarc, from_domain, policy)


# ---------------------------------------------------------------- the fields


def trace_fields(verdict: Verdict, authserv_id: str, ip: str, helo: str, mail_from: str,
                 now: datetime | None = None) -> bytes:
    """Authentication-Results above Received, CRLF-terminated, to prepend to the mail."""
    parts = [_safe(authserv_id)]
    if verdict.dkim:
        parts += [f"dkim={d.result} header.d={_safe(d.domain) or 'unknown'} header.s={_safe(d.selector) or 'unknown'}"
                  for d in verdict.dkim]
    else:
        parts.append("dkim=none")
    spf_prop = f"smtp.mailfrom={_safe(mail_from)}" if mail_from else f"smtp.helo={_safe(helo) or 'unknown'}"
    parts.append(f"spf={verdict.spf} {spf_prop}")
    dmarc = f"dmarc={verdict.dmarc}"
    if verdict.from_domain:
        dmarc += f" header.from={_safe(verdict.from_domain)}"
    if verdict.policy:
        dmarc += f" policy.dmarc={_safe(verdict.policy)}"
    parts.append(dmarc)
    results = "Authentication-Results: " + ";\r\n ".join(parts) + "\r\n"
    date = email.utils.format_datetime(now or datetime.now(timezone.utc))
    received = f"Received: from {_safe(helo) or 'unknown'} ([{_safe(ip)}])\r\n by {_safe(authserv_id)} with ESMTP; {date}\r\n"
    return (results + received).encode("ascii")


def remove_claims(raw: bytes, authserv_id: str) -> bytes:
    """Rename header fields that claim ``authserv_id`` (RFC 8601 section 5): only deskmail may write them."""
    head, sep, body = _split(raw)
    if not sep:
        return raw
    out, changed = [], False
    for name, field in _raw_fields(head):
        if name.lower() == b"authentication-results" and _claimed_id(field) == authserv_id.lower():
            field = REMOVED_FIELD + field[len(name):]
            changed = True
        out.append(field)
    return b"".join(out) + sep + body if changed else raw


def _claimed_id(field: bytes) -> str:
    value = field.split(b":", 1)[1]
    value = re.sub(rb"\([^()]*\)", b" ", value)  # comments, one level is all a real server writes
    return value.split(b";", 1)[0].strip().split(b" ", 1)[0].decode("ascii", "replace").lower()


def _text(value: object) -> str:
    """dkimpy's d= and s= are bytes once a signature parsed (the selector defaults to the str 'default')."""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return value if isinstance(value, str) else ""


def _safe(text: str) -> str:
    return _UNSAFE.sub("", text)[:255]


def _split(raw: bytes) -> tuple[bytes, bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        at = raw.find(sep)
        if at >= 0:
            return raw[:at + len(sep) // 2], raw[at + len(sep) // 2:at + len(sep)], raw[at + len(sep):]
    return raw, b"", b""


def _raw_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """(name, the whole field with its continuation lines and line ends), in order."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.splitlines(keepends=True):
        match = _FIELD_NAME.match(line)
        if match or not fields:
            fields.append((match.group(1) if match else b"", line))
        else:
            name, text = fields[-1]
            fields[-1] = (name, text + line)
    return fields


def _fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    return _raw_fields(_split(raw)[0])


def _from_domain(raw: bytes) -> str:
    """The domain of the single From address; empty when there is none or several (DMARC cannot apply)."""
    froms = [f.split(b":", 1)[1] for name, f in _fields(raw) if name.lower() == b"from"]
    if len(froms) != 1:
        return ""
    value = re.sub(rb"\r?\n[ \t]", b" ", froms[0]).decode("utf-8", "replace")
    addresses = [a for _, a in email.utils.getaddresses([value]) if "@" in a]
    return addresses[0].rpartition("@")[2].strip().lower() if len(addresses) == 1 else ""
