"""A 30 MB mail with attachments through Dovecot, the fetcher, the router and the
ticketer: one ticket with every attachment whole, each downloadable from the api,
and the fetcher's and the router's peak memory (VmHWM, read from /proc) stays under
200 MB. Once with the blob folder, once with an S3 bucket (moto in server mode): the
claim check, the attachments and the download all go through the bucket then."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable

import pytest

from services.common.blobs import blob_store
from services.tickets import TicketStore
from tests.harness.s3 import S3Server
from tests.harness.stack import Stack, wait_for

pytestmark = pytest.mark.e2e

PEAK_LIMIT_MB = 200
SIZES = (9_000_000, 7_500_000, 4_000_000, 1_500_000)  # decoded; about 30 MB once base64-encoded


def _config(unique: Callable[[str], str], dovecot: Any, data: Path, support: str, blobs: str) -> str:
    topics = {k: unique(f"large-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    return blobs + textwrap.dedent(f"""\
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


@pytest.mark.parametrize("backend", ["folder", "s3"])
def test_a_30_mb_mail_becomes_one_ticket_with_every_attachment_in_bounded_memory(
        tmp_path: Path, dovecot: Any, broker: Any, unique: Callable[[str], str], request: pytest.FixtureRequest,
        backend: str) -> None:
    support = f"{unique('large')}@example.com"
    dovecot.add_user(support, "imap-pw")
    s3: S3Server | None = request.getfixturevalue("s3") if backend == "s3" else None
    bucket = s3.bucket() if s3 else ""
    stack = Stack(_config(unique, dovecot, tmp_path / "data", support, s3.config_yaml(bucket) if s3 else ""),
                  tmp_path, broker.bootstrap, env={"LARGE_IMAP_PW": "imap-pw", **S3Server.env()})
    stack.create_topics()
    raw, digests = _large_mail(support)
    assert 29_000_000 < len(raw) < 32_000_000
    try:
        stack.start("ticketer", "router", "fetcher", "api")
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
        blobs = blob_store(stack.config)
        for number, a in enumerate(ticket.attachments):
            assert a.blob_ref is not None
            assert hashlib.sha256(blobs.get(a.blob_ref)).hexdigest() == a.sha256
            url = f"http://127.0.0.1:{stack.ports['api']}/tickets/{ticket.key}/files/{number}"
            with urllib.request.urlopen(url, timeout=30) as response:
                assert hashlib.sha256(response.read()).hexdigest() == a.sha256, a.filename
        assert "[deskmail:" not in ticket.description  # nothing was over a limit
        if s3 is not None:  # the raw mail (claim check) and the four attachments, nothing else, nowhere else
            assert len(s3.keys(bucket)) == 5 and s3.uploads(bucket) == []
            assert not any("/uploads/" in key for key in s3.keys(bucket))
            assert not stack.config.blob_path.exists()
        for name, mb in peaks.items():
            assert mb < PEAK_LIMIT_MB, f"the {name} peaked at {mb:.0f} MB"
        store.close()
        assert stack.stop() == {"ticketer": 0, "router": 0, "fetcher": 0, "api": 0}
    finally:
        stack.stop()
