"""``CatchUp``: a session IDLEs only once no mail came in since its last SEARCH."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.retry import FakeClock
from services.fetcher.imap import BUSY_SECONDS, LOOK_SECONDS, CatchUp
from services.fetcher.worker import announces_new_mail


class Session:
    """The slice of IMAPClient that CatchUp uses; ``folder`` holds the UIDs on the server."""

    def __init__(self, folder: list[int], uidnext: int | None):
        self.folder = folder
        self.uidnext = uidnext
        self.calls: list[tuple[Any, ...]] = []

    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, Any]:
        self.calls.append(("select", folder))
        return {b"EXISTS": len(self.folder), **({b"UIDNEXT": self.uidnext} if self.uidnext else {})}

    def search(self, criteria: Any = "ALL", charset: str | None = None) -> list[int]:
        self.calls.append(("search", criteria))
        if isinstance(criteria, list) and criteria[0] == "UID":
            low = int(criteria[1].split(":")[0])
            # RFC 3501: "n:*" always includes the highest UID, even below n
            return sorted({u for u in self.folder if u >= low} | ({max(self.folder)} if self.folder else set()))
        return list(self.folder)

    def noop(self) -> Any:
        self.calls.append(("noop",))

    def idle(self) -> None:
        self.calls.append(("idle",))

    def idle_check(self, timeout: float | None = None) -> list[tuple[Any, ...]]:
        self.calls.append(("idle_check", timeout))
        return []

    def idle_done(self) -> None:
        self.calls.append(("idle_done",))

    def sent(self) -> list[str]:
        return [c[0] for c in self.calls]


def quiet(server: Session, clock: FakeClock) -> CatchUp:
    """A session whose last SEARCH found mail longer ago than the busy time."""
    client = CatchUp(server, clock)
    client.select_folder("INBOX")
    client.search("ALL")
    clock.advance(BUSY_SECONDS)
    server.calls.clear()
    return client


def test_nothing_new_and_quiet_idles_as_before():
    server, clock = Session([3, 4], uidnext=5), FakeClock()
    client = quiet(server, clock)
    client.idle()
    assert client.idle_check(timeout=1.0) == []
    client.idle_done()
    # the highest UID (4) answers "UID 5:*" too: it is not new
    assert server.calls == [("noop",), ("search", ["UID", "5:*"]), ("idle",), ("idle_check", 1.0), ("idle_done",)]


def test_mail_after_the_search_of_a_quiet_mailbox_is_answered_at_once_without_idle():
    server, clock = Session([3, 4], uidnext=5), FakeClock()
    client = quiet(server, clock)
    server.folder += [5, 6]  # arrived after the SEARCH, before IDLE
    client.idle()
    answer = client.idle_check(timeout=1.0)
    assert announces_new_mail(answer) and answer == [(2, b"EXISTS")]
    client.idle_done()
    assert not {"idle", "idle_check", "idle_done"} & set(server.sent())
    assert clock.waits == []


def test_mail_after_the_search_of_a_busy_mailbox_is_found_at_the_first_look():
    server, clock = Session([3, 4], uidnext=5), FakeClock()
    client = CatchUp(server, clock)
    client.select_folder("INBOX")
    client.search("ALL")
    server.folder += [5, 6]  # arrived while the batch was delivered
    client.idle()
    assert client.idle_check(timeout=1.0) == [(2, b"EXISTS")]
    client.idle_done()
    assert not {"idle", "idle_check", "idle_done"} & set(server.sent())
    assert clock.waits == [LOOK_SECONDS]  # a busy mailbox is rescanned at most this often


def test_after_mail_came_in_it_looks_every_few_ms_instead_of_idling():
    server, clock = Session([3], uidnext=4), FakeClock()
    client = CatchUp(server, clock)
    client.select_folder("INBOX")
    client.search("ALL")
    clock.on_wait = lambda seconds: server.folder.append(4) if len(clock.waits) == 3 else None
    client.idle()
    assert client.idle_check(timeout=1.0) == [(1, b"EXISTS")]
    client.idle_done()
    assert clock.waits == [LOOK_SECONDS] * 3
    assert not {"idle", "idle_check", "idle_done"} & set(server.sent())


def test_looking_ends_in_idle_when_the_busy_time_is_over():
    server, clock = Session([3], uidnext=4), FakeClock()
    client = CatchUp(server, clock)
    client.select_folder("INBOX")
    client.search("ALL")
    client.idle()
    assert client.idle_check(timeout=0.6) == []  # looked for 0.6 s: nothing, and no IDLE yet
    assert "idle" not in server.sent()
    assert client.idle_check(timeout=1.0) == []  # 0.4 s more of looking, then IDLE for the rest
    client.idle_done()
    assert server.sent()[-3:] == ["idle", "idle_check", "idle_done"]
    assert server.calls[-2][1] == pytest.approx(0.6)  # the whole check took its 1.0 s
    assert abs(sum(clock.waits) - BUSY_SECONDS) < 1e-9


def test_mail_found_by_the_search_after_the_select_is_not_new():
    server, clock = Session([3], uidnext=4), FakeClock()
    client = CatchUp(server, clock)
    client.select_folder("INBOX")
    server.folder += [4]  # between SELECT and SEARCH: the search finds it
    assert client.search("ALL") == [3, 4]
    clock.advance(BUSY_SECONDS)
    client.idle()
    assert server.sent()[-1] == "idle"
    assert server.calls[-2] == ("search", ["UID", "5:*"])


def test_an_empty_folder_idles():
    server = Session([], uidnext=1)
    client = CatchUp(server, FakeClock())
    client.select_folder("INBOX")
    assert client.search("ALL") == []
    client.idle()
    assert server.sent()[-1] == "idle"


def test_without_uidnext_it_idles_directly():
    server = Session([3], uidnext=None)
    client = CatchUp(server, FakeClock())
    client.select_folder("INBOX")
    client.search("ALL")
    server.folder += [4]
    client.idle()
    assert server.sent() == ["select", "search", "idle"]


def test_other_calls_reach_the_session():
    server = Session([1], uidnext=2)
    server.capabilities = (b"IDLE",)  # type: ignore[attr-defined]
    assert CatchUp(server).capabilities == (b"IDLE",)
