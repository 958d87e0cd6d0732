"""Who may hand mail to the ingress: allowed networks and SMTP AUTH (pure, no I/O).

* A client inside ``ingress.allowed_networks`` (default: loopback, the RFC 1918
  ranges and IPv6 unique local addresses) delivers without AUTH, over SMTP and LMTP.
* A client outside them is refused with ``554 5.7.1`` instead of the greeting, unless
  ``ingress.auth.users`` are configured and it speaks SMTP: then it gets the greeting
  and may send only after AUTH (``MAIL FROM`` before it: ``530 5.7.0``). LMTP has no
  AUTH: outside the networks it is always refused.
* AUTH (PLAIN and LOGIN only) is offered after STARTTLS, or on a loopback connection,
  so a password never crosses the network in clear; the config refuses users without
  a certificate unless the ingress listens on loopback.

Passwords are compared in constant time, and an unknown login costs the same
comparison as a known one. Nothing here logs or returns a password.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from services.common.config import IngressLogin

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Dialect = Literal["smtp", "lmtp"]
# What a new connection may do: deliver at once, deliver after AUTH, nothing.
Admittance = Literal["open", "auth", "refused"]

REPLY_NOT_ALLOWED: Final = "554 5.7.1 Your address may not deliver mail here"
REPLY_AUTH_REQUIRED: Final = "530 5.7.0 Authentication required"
# Mechanisms aiosmtpd has built in; the ingress offers exactly these, or none.
MECHANISMS: Final = ("LOGIN", "PLAIN")
# AUTH commands one session may send before it is closed (421 4.7.0): no password guessing at speed.
AUTH_ATTEMPTS: Final = 3


def client_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer's address; an IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, from a
    dual-stack socket) as the IPv4 address it is; None when it is not an address."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # without an IPv6 zone
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR texts as networks (the config checked them; raises ValueError otherwise)."""
    return tuple(ipaddress.ip_network(text, strict=True) for text in texts)


@dataclass(frozen=True)
class AccessPolicy:
    """The ingress's decisions on a client; built once from the config."""

    allowed: tuple[IPNetwork, ...]
    logins: tuple[IngressLogin, ...] = ()
    _dummy: bytes = field(default=b"\0" * 32, repr=False)

    @classmethod
    def of(cls, allowed_networks: Sequence[str], logins: Sequence[IngressLogin]) -> "AccessPolicy":
        return cls(networks(allowed_networks), tuple(logins))

    @property
    def auth_offered(self) -> bool:
        return bool(self.logins)

    def inside(self, peer_ip: str) -> bool:
        """Whether ``peer_ip`` is in an allowed network (anything unreadable is not)."""
        address = client_address(peer_ip)
        return address is not None and any(address.version == net.version and address in net
                                           for net in self.allowed)

    def admit(self, peer_ip: str, dialect: Dialect) -> Admittance:
        """What a connection from ``peer_ip`` may do, decided at connect."""
        if self.inside(peer_ip):
            return "open"
        if dialect == "smtp" and self.auth_offered:
            return "auth"
        return "refused"

    def may_authenticate(self, peer_ip: str, tls: bool) -> bool:
        """AUTH is offered on an encrypted session, or on loopback (nothing crosses a network)."""
        if not self.auth_offered:
            return False
        address = client_address(peer_ip)
        return tls or (address is not None and address.is_loopback)

    def check(self, login: bytes, password: bytes) -> str | None:
        """The account's login when ``login`` and ``password`` match one, else None.

        Every configured password is compared (in constant time), so the answer takes
        as long for an unknown login as for a wrong password.
        """
        found: str | None = None
        for account in self.logins:
            name_ok = hmac.compare_digest(account.login.lower().encode(), login.lower())
            secret_ok = hmac.compare_digest(account.password.reveal().encode(), password)
            if name_ok and secret_ok and found is None:
                found = account.login
        if not self.logins:
            hmac.compare_digest(self._dummy, password)
        return found
