"""What every request handler of the api shares: the config, the store, the relay,
and who the agent is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fastapi import HTTPException, Request

from services.common.config import Config, Member
from services.tickets import TicketStore


class Waker(Protocol):
    """Anything told that an outgoing mail was stored (the outbox relay)."""

    def wake(self) -> None: ...


@dataclass(frozen=True)
class ApiContext:
    config: Config
    store: TicketStore
    relay: Waker | None  # None: nothing relays in this process (tests, a read-only api)

    def stored(self) -> None:
        if self.relay is not None:
            self.relay.wake()


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.deskmail
    return ctx


def header_agent(request: Request) -> Member | None:
    """The agent named by ``api.user_header`` (set by an authenticating proxy).

    Without that setting there is no identity here (None) and a reply names its
    author itself. With it, a request lacking the header or naming someone who
    is not an organization member is refused with 403.
    """
    config = context(request).config
    header = config.api.user_header
    if not header:
        return None
    value = request.headers.get(header, "").strip()
    if not value:
        raise HTTPException(403, f"no {header} header: sign in through the proxy")
    member = config.member(value)
    if member is None:
        raise HTTPException(403, f"{value} is not an organization member")
    return member
