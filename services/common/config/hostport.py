"""Listen addresses: ``host:port``, or ``[v6]:port`` for an IPv6 address.

``ingress.listen``, ``ingress.lmtp_listen`` and ``api.listen`` hold a parsed
``HostPort``, so a malformed address is a config error with its line number
instead of a crash when the listener starts. Port 0 is accepted: the system then
picks a free port (the ingress reports the one it bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator


@dataclass(frozen=True)
class HostPort:
    host: str  # an IPv6 address without its brackets
    port: int

    @classmethod
    def parse(cls, value: str) -> HostPort:
        """``"127.0.0.1:2525"``, ``"[::1]:2525"`` -> HostPort; raises ValueError saying what is wrong."""
        text = value.strip()
        hint = "write HOST:PORT, e.g. 127.0.0.1:2525 or [::1]:2525"
        if text.startswith("["):  # [v6]:port
            host, bracket, rest = text[1:].partition("]")
            if not bracket or ":" not in host:
                raise ValueError(f"listen address {value!r}: brackets are for an IPv6 address: {hint}")
            if not rest.startswith(":"):
                raise ValueError(f"listen address {value!r} has no port: {hint}")
            port = rest[1:]
        else:
            host, sep, port = text.rpartition(":")
            if not sep:
                raise ValueError(f"listen address {value!r} has no port: {hint}")
            if ":" in host or "[" in host or "]" in host:
                raise ValueError(f"listen address {value!r}: an IPv6 address goes in brackets: {hint}")
        if not (port.isascii() and port.isdigit()):
            raise ValueError(f"listen address {value!r}: the port {port!r} is not a number: {hint}")
        if int(port) > 65535:
            raise ValueError(f"listen address {value!r}: the port {int(port)} is above 65535")
        if not host:
            raise ValueError(f"listen address {value!r} has no host: {hint}")
        if any(c.isspace() for c in host):
            raise ValueError(f"listen address {value!r}: the host {host!r} contains a space")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _parse(value: Any) -> Any:
    if isinstance(value, str):
        return HostPort.parse(value)
    if isinstance(value, HostPort):
        return value
    raise ValueError("a listen address is a string HOST:PORT, e.g. 127.0.0.1:2525")


# The schema's field type: the file holds a string, the model a HostPort.
ListenAddress = Annotated[HostPort, BeforeValidator(_parse)]
