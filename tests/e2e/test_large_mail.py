"""A 30 MB mail with attachments through Dovecot, the fetcher, the router and the
ticketer: one ticket with every attachment whole, and the fetcher's and the
router's peak memory (VmHWM, read from /proc) stays under 200 MB."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable

import pytest

from services.common.blobs import FolderBlobStore
from services.tickets import TicketStore
from tests.harness.stack import Stack, wait_for

pytestmark = pytest.mark.e2e

PEAK_LIMIT_MB = 200
SIZES = (9_000_000, 7_500_000, 4_000_000, 1_500_000)  # decoded; about 30 MB once base64-encoded


def _config(unique: Callable[[str], str], dovecot: Any, data: Path, support: str) -> str:
    topics = {k: unique(f"large-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    return textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("large")}
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {json.dumps(topics)}
        data_dir: {data}
        fetcher: {{poll_interval_seconds: 1}}
        queues:
          - key: SUPPORT
            mailboxes:
              - address: {support}
                accept_external: true
                imap: {{host: {dovecot.host}, port: {dovecot.imaps_port}, security: ssl, cafile: {dovecot.cafile},
                        password: {{env: LARGE_IMAP_PW}}}}
        """)


def _large_mail(support: str) -> tuple[bytes, dict[str, str]]:
    msg = EmailMessage()
    msg["From"] = "Carol <carol@customer.test>"
    msg["To"] = support
    msg["Subject"] = "Crash dumps and screen recordings"
    msg["Message-ID"] = "<large-1@customer.test>"
    msg.set_content("The dumps and the recording of the crash are attached.\n")
    digests = {}
    for i, size in enumerate(SIZES):
        payload = os.urandom(size)  # incompressible, as real recordings are
        name = f"capture-{i}.bin" if i else "screen recording.mp4"
        digests[name] = hashlib.sha256(payload).hexdigest()
        msg.add_attachment(payload, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(), digests


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def test_a_30_mb_mail_becomes_one_ticket_with_every_attachment_in_bounded_memory(
        tmp_path: Path, dovecot: Any, broker: Any, unique: Callable[[str], str]) -> None:
    support = f"{unique('large')}@example.com"
    dovecot.add_user(support, "imap-pw")
    stack = Stack(_config(unique, dovecot, tmp_path / "data", support), tmp_path, broker.bootstrap,
                  env={"LARGE_IMAP_PW": "imap-pw"})
    stack.create_topics()
    raw, digests = _large_mail(support)
    assert 29_000_000 < len(raw) < 32_000_000
    try:
        stack.start("ticketer", "router", "fetcher")
        store = TicketStore(stack.config.database_url)
        idle = {name: _peak_mb(stack.procs[name].pid) for name in ("fetcher", "router")}
        print(f"\nidle peak: {idle}")
        dovecot.append(support, "imap-pw", raw)
        wait_for(lambda: store.count_tickets() == 1, 120, "the ticket")
        peaks = {name: _peak_mb(stack.procs[name].pid) for name in ("fetcher", "router")}
        print(f"\nraw mail {len(raw) / 1e6:.1f} MB; peak RSS: "
              + ", ".join(f"{name} {mb:.0f} MB" for name, mb in peaks.items()))

        ticket = store.get_ticket(store.list_tickets()[0].key)
        assert ticket is not None
        assert {a.filename: a.sha256 for a in ticket.attachments} == digests
        assert [a.size for a in sorted(ticket.attachments, key=lambda a: a.filename)] == [
            SIZES[1], SIZES[2], SIZES[3], SIZES[0]]
        blobs = FolderBlobStore(stack.config.blob_path)
        for a in ticket.attachments:
            assert a.blob_ref is not None
            assert hashlib.sha256(blobs.get(a.blob_ref)).hexdigest() == a.sha256
        assert "[deskmail:" not in ticket.description  # nothing was over a limit
        for name, mb in peaks.items():
            assert mb < PEAK_LIMIT_MB, f"the {name} peaked at {mb:.0f} MB"
        store.close()
        assert stack.stop() == {"ticketer": 0, "router": 0, "fetcher": 0}
    finally:
        stack.stop()
