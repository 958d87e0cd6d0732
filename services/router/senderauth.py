"""Whether a mail proves its From: the Authentication-Results (RFC 8601) deskmail believes.

Pure: the mail's trace fields and the trusted authserv-ids in, a verdict out.

Which fields count (the trust border, RFC 8601 section 5). Every header field
below the receiving server's own trace fields may have been written by the sender,
including an ``Authentication-Results: mx.example.com; dmarc=pass`` and a
``Received: ... by mx.example.com`` under it. So the fields are read top-down
(newest first) and:

1. an Authentication-Results field counts only when its authserv-id is one of
   ``organization.sender_authentication.trusted_authserv_ids`` (case-insensitive,
   a trailing dot ignored) and it parses (a field this module cannot read strictly
   is ignored, never half-read);
2. the scan stops at the first Received field added by a trusted server: one that
   names ``by <trusted id>`` (the trusted hop). Trusted Authentication-Results
   fields above it count. If there are none above it, the server is one that
   writes its results just below its own Received field (Gmail does: ``Received:
   ... by mx.google.com`` and then ``Authentication-Results: mx.google.com``), and
   only the *topmost* trusted field between that hop and the next Received field
   counts: the server prepends its fields, so anything the sender forged in that
   place lies below the real one. Everything further down is ignored;
3. when no Received field names a trusted server, nothing counts: the trusted
   server did not handle this mail, so any field claiming its name is forged.

A Received field is matched liberally (``by <id>`` anywhere in it, comments
included), because the mistake in that direction is safe: stopping too early only
believes fewer fields, while missing the trusted server's own Received would let
forged fields below it count. Name only servers that write Authentication-Results
for every mail they accept (RFC 8601 section 5 also has them remove or rename
fields claiming their authserv-id that arrive with the mail): a server that writes
none would leave the topmost field below its hop to the sender.

What proves the From (``verify``): among the counted results, ``dmarc=pass``
(whose ``header.from``, when given, is the From domain), or ``dkim=pass`` whose
``header.d`` aligns with the From domain: equal to it, or a parent of it
(``From: a@eu.example.com``, ``header.d=example.com``). A parent must have at
least two labels (``header.d=com`` aligns with nothing); without the public
suffix list a signature of ``co.uk`` would still align with every ``*.co.uk``,
which needs a DKIM key published for ``co.uk`` itself. The identity is the From
field only: never Sender, Reply-To or Return-Path.

Parsed subset of RFC 8601: ``authserv-id [version] ; method[/version]=result
[reason=value] [ptype.property=value ...] ; ...`` or ``authserv-id; none``, with
comments and quoted strings; ``ptype.property`` is written without spaces around
the dot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["AuthResults", "AuthResultsError", "MethodResult", "Verdict", "counted_results", "parse", "verify"]


class AuthResultsError(ValueError):
    """An Authentication-Results value outside the parsed subset; ``str(exc)`` says where."""


@dataclass(frozen=True)
class MethodResult:
    method: str  # lower case: dkim, spf, dmarc, ...
    result: str  # lower case: pass, fail, none, ...
    properties: tuple[tuple[str, str], ...] = ()  # ("header.d", "example.com"), keys lower case

    def prop(self, name: str) -> str | None:
        return next((value for key, value in self.properties if key == name), None)


@dataclass(frozen=True)
class AuthResults:
    authserv_id: str  # lower case, without a trailing dot
    results: tuple[MethodResult, ...]


Reason = Literal["dmarc_pass", "aligned_dkim_pass", "no_trusted_results", "no_passing_result", "no_from_header"]


@dataclass(frozen=True)
class Verdict:
    authenticated: bool
    reason: Reason  # closed set, for logs and tests


_VALUE = r'(?:"(?:[^"\\]|\\.)*"|[^\s"]+)'
_ID_LINE = re.compile(rf"\s*(?P<id>{_VALUE})(?:\s+(?P<version>\d+))?\s*")
_KEYWORD = r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?"
_METHOD = re.compile(rf"\s*(?P<method>{_KEYWORD})(?:\s*/\s*(?P<version>\d+))?\s*=\s*(?P<result>{_KEYWORD})")
_PROPERTY = re.compile(rf"\s+(?P<key>{_KEYWORD}(?:\.{_KEYWORD})?)\s*=\s*(?P<value>{_VALUE})")
_UNQUOTE = re.compile(r"\\(.)")
_RECEIVED_BY = re.compile(r"(?:^|[\s(;])by\s+\[?(?P<host>[A-Za-z0-9.:-]+)", re.IGNORECASE)


def _strip_comments(value: str) -> str:
    """Replace each (possibly nested) comment with a space, leaving quoted strings alone."""
    out: list[str] = []
    depth = 0
    quoted = False
    chars = iter(value)
    for char in chars:
        if char == "\\" and (quoted or depth):
            escaped = next(chars, "")
            if not depth:
                out.append(char + escaped)
            continue
        if quoted:
            out.append(char)
            quoted = char != '"'
        elif char == "(":
            depth += 1
        elif char == ")":
            if not depth:
                raise AuthResultsError("a ')' closes no comment")
            depth -= 1
            if not depth:
                out.append(" ")
        elif depth:
            continue
        else:
            out.append(char)
            quoted = char == '"'
    if depth or quoted:
        raise AuthResultsError("a comment or quoted string is not closed")
    return "".join(out)


def _split(value: str) -> list[str]:
    """Split on ';' outside quoted strings."""
    parts, start, quoted, i = [], 0, False, 0
    while i < len(value):
        char = value[i]
        if char == "\\" and quoted:
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    parts.append(value[start:])
    return parts


def _unquote(value: str) -> str:
    return _UNQUOTE.sub(r"\1", value[1:-1]) if value.startswith('"') else value


def _host(name: str) -> str:
    return name.lower().rstrip(".")


def parse(value: str) -> AuthResults:
    """Parse one Authentication-Results value (after the colon). Raises AuthResultsError."""
    head, *rest = _split(_strip_comments(value))
    first = _ID_LINE.fullmatch(head)
    if first is None:
        raise AuthResultsError(f"no authserv-id in {head.strip()!r}")
    if first["version"] not in (None, "1"):
        raise AuthResultsError(f"unknown Authentication-Results version {first['version']}")
    authserv_id = _host(_unquote(first["id"]))
    if rest and not rest[-1].strip():
        rest.pop()  # a trailing ';', written by some servers
    if not rest:
        raise AuthResultsError("no results and no 'none'")
    if len(rest) == 1 and rest[0].strip().lower() == "none":
        return AuthResults(authserv_id, ())
    return AuthResults(authserv_id, tuple(_result(part) for part in rest))


def _result(part: str) -> MethodResult:
    method = _METHOD.match(part)
    if method is None:
        raise AuthResultsError(f"{part.strip()!r} is not method=result")
    properties: list[tuple[str, str]] = []
    position = method.end()
    while position < len(part):
        if not part[position:].strip():
            break
        found = _PROPERTY.match(part, position)
        if found is None:
            raise AuthResultsError(f"unreadable property in {part.strip()!r}")
        key = found["key"].lower()
        if key != "reason" and "." not in key:
            raise AuthResultsError(f"{key!r} is neither reason nor ptype.property")
        properties.append((key, _unquote(found["value"])))
        position = found.end()
    return MethodResult(method["method"].lower(), method["result"].lower(), tuple(properties))


def _added_by_trusted(received: str, trusted: frozenset[str]) -> bool:
    return any(_host(found["host"]) in trusted for found in _RECEIVED_BY.finditer(received))


def counted_results(trace: Iterable[tuple[str, str]], trusted_ids: Sequence[str]) -> tuple[MethodResult, ...]:
    """The results inside the trust border (see the module docstring); trace is top-down."""
    trusted = frozenset(_host(authserv_id) for authserv_id in trusted_ids)
    counted: list[MethodResult] = []
    fields = iter(trace)
    for name, value in fields:
        if name == "received":
            if _added_by_trusted(value, trusted):
                if counted:  # the server wrote its results above its hop: nothing below counts
                    return tuple(counted)
                return _first_below_the_hop(fields, trusted)
        elif name == "authentication-results":
            results = _trusted(value, trusted)
            if results is not None:
                counted.extend(results.results)
    return ()  # no trusted server handled this mail: every field naming one is forged


def _first_below_the_hop(fields: Iterable[tuple[str, str]], trusted: frozenset[str]) -> tuple[MethodResult, ...]:
    """The server's results written just below its own Received field (Gmail's order):
    the topmost trusted field before the next Received. Anything further down, and
    any second field, may be the sender's: the server prepends, so its own is on top."""
    for name, value in fields:
        if name == "received":
            return ()
        if name == "authentication-results":
            results = _trusted(value, trusted)
            if results is not None:
                return results.results
    return ()


def _trusted(value: str, trusted: frozenset[str]) -> AuthResults | None:
    try:
        results = parse(value)
    except AuthResultsError:
        return None
    return results if results.authserv_id in trusted else None


def _aligned(signing_domain: str, from_domain: str) -> bool:
    return signing_domain == from_domain or (
        "." in signing_domain and from_domain.endswith("." + signing_domain)
    )


def verify(
    trace: Iterable[tuple[str, str]], from_email: str, from_header: bool, trusted_ids: Sequence[str]
) -> Verdict:
    """Whether the counted results prove ``from_email``, the address in the mail's From field.

    ``from_header`` False means the parser took the address from Sender, Reply-To or
    Return-Path because From had none: that never proves anything.
    """
    if not from_header:
        return Verdict(False, "no_from_header")
    results = counted_results(trace, trusted_ids)
    if not results:
        return Verdict(False, "no_trusted_results")
    from_domain = _host(from_email.rpartition("@")[2])
    for result in results:
        if result.result != "pass":
            continue
        if result.method == "dmarc":
            header_from = result.prop("header.from")
            if header_from is None or _host(header_from.rpartition("@")[2]) == from_domain:
                return Verdict(True, "dmarc_pass")
        elif result.method == "dkim":
            signing_domain = result.prop("header.d")
            if signing_domain and _aligned(_host(signing_domain), from_domain):
                return Verdict(True, "aligned_dkim_pass")
    return Verdict(False, "no_passing_result")
