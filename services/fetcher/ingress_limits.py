"""How much the SMTP/LMTP ingress takes on at once: open sessions and message bytes in flight.

Without a bound, every connection an MTA opens holds its message until the broker
acknowledges it, so a burst of large mail grows the fetcher past its memory limit.
Beyond either limit the ingress answers with a 4xx reply (enhanced code 4.3.2,
"system not accepting network messages"): the sending MTA keeps the mail and
retries, exactly as when the broker is unavailable.

* ``ingress.max_sessions``: the connection one beyond it is answered ``421 4.3.2``
  in place of the greeting and closed (421 is the reply that closes the channel,
  RFC 5321 3.8).
* ``ingress.max_inflight_bytes``: message bytes received and not yet answered, over
  all sessions. ``MAIL FROM ... SIZE=`` reserves its size until the transaction
  ends, or gets ``451 4.3.2`` before any data is sent when it does not fit; a message
  that outgrows the budget (beyond its SIZE, or announced none) while it arrives is
  read to its end, dropped, and answered ``451 4.3.2``.

Used only from the ingress's event loop thread, so it needs no lock.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from services.common import metrics

# Why the ingress told an MTA to try again later (the label of deskmail_fetcher_ingress_deferrals_total):
# a limit of this module, the broker (or the blob store) refusing, or no acknowledgement in time.
DeferReason = Literal["sessions", "inflight_bytes", "broker", "timeout"]
DEFER_REASONS: Final[tuple[DeferReason, ...]] = get_args(DeferReason)

REPLY_TOO_MANY_SESSIONS: Final = "421 4.3.2 Too many connections, try again later\r\n"
REPLY_BUSY: Final = "451 4.3.2 Too much mail in progress, try again later"


class Admission:
    """Counts sessions and in-flight bytes against their limits, and exports both as gauges."""

    def __init__(self, max_sessions: int, max_inflight_bytes: int):
        self.max_sessions = max_sessions
        self.max_inflight_bytes = max_inflight_bytes
        self.sessions = 0
        self.inflight_bytes = 0

    def open_session(self) -> bool:
        """Count one more session; False (and nothing counted) when the limit is reached."""
        if self.sessions >= self.max_sessions:
            return False
        self.sessions += 1
        metrics.FETCHER_INGRESS_SESSIONS.set(self.sessions)
        return True

    def close_session(self) -> None:
        self.sessions -= 1
        metrics.FETCHER_INGRESS_SESSIONS.set(self.sessions)

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes fit in the budget now (nothing is taken)."""
        return self.inflight_bytes + size <= self.max_inflight_bytes

    def take(self, size: int) -> bool:
        """Take ``size`` bytes of the budget; False (and nothing taken) when they do not fit."""
        if not self.fits(size):
            return False
        self.inflight_bytes += size
        metrics.FETCHER_INGRESS_INFLIGHT.set(self.inflight_bytes)
        return True

    def release(self, size: int) -> None:
        self.inflight_bytes -= size
        metrics.FETCHER_INGRESS_INFLIGHT.set(self.inflight_bytes)


def announced_size(mail_options: list[str]) -> int:
    """The ``SIZE=`` of MAIL FROM's parameters (aiosmtpd checked it is a number), 0 when absent."""
    for option in mail_options:
        key, _, value = option.partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0
