"""The ingress's admission bookkeeping: sessions and in-flight bytes against their limits."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from services.fetcher.ingress_limits import DEFER_REASONS, Admission, announced_size


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def test_sessions_are_counted_up_to_the_limit_and_freed_on_close() -> None:
    admission = Admission(max_sessions=2, max_inflight_bytes=1000)
    assert admission.open_session() and admission.open_session()
    assert not admission.open_session()  # refused: nothing counted
    assert admission.sessions == 2 and gauge("deskmail_fetcher_ingress_open_sessions") == 2
    admission.close_session()
    assert admission.open_session()
    assert not admission.open_session()


def test_bytes_are_taken_only_when_they_fit_and_released() -> None:
    admission = Admission(max_sessions=1, max_inflight_bytes=1000)
    assert admission.fits(1000) and not admission.fits(1001)
    assert admission.take(600)
    assert not admission.take(401)  # refused: nothing taken
    assert admission.inflight_bytes == 600 and gauge("deskmail_fetcher_ingress_inflight_bytes") == 600
    assert admission.take(400) and not admission.fits(1)
    admission.release(1000)
    assert admission.inflight_bytes == 0 and gauge("deskmail_fetcher_ingress_inflight_bytes") == 0


@pytest.mark.parametrize(("options", "size"), [
    (["SIZE=12345"], 12345),
    (["BODY=8BITMIME", "SIZE=7"], 7),
    (["size=9"], 9),
    (["BODY=8BITMIME"], 0),
    ([], 0),
    (["SIZE"], 0),
])
def test_announced_size_is_read_from_the_mail_parameters(options: list[str], size: int) -> None:
    assert announced_size(options) == size


def test_deferral_reasons_are_a_closed_set() -> None:
    assert DEFER_REASONS == ("sessions", "inflight_bytes", "broker", "timeout")
