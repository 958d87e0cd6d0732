"""Ingress memory benchmark: many large messages at once against a real fetcher process.

    .venv/bin/python tests/bench/ingress_memory.py [--sessions 32] [--size-mb 30]
        [--max-sessions N] [--max-inflight-mb N] [--code DIR]

Starts the local broker and a ``deskmail run fetcher`` whose only mailbox is an
ingress address, then sends ``--sessions`` messages of ``--size-mb`` MB over as
many concurrent SMTP connections. A client answered 4xx (421 at connect, 451 at
MAIL or DATA) waits a second and tries again, as an MTA's queue would, until every
message is accepted. Prints the fetcher's resident memory before, at its peak
(VmHWM) and after the last message, the wall time and the deferrals by reason.

``--max-sessions`` / ``--max-inflight-mb`` set ``ingress.max_sessions`` /
``ingress.max_inflight_bytes`` (unset: the defaults). ``--code DIR`` runs the
fetcher from another checkout (e.g. one before the limits existed; leave the two
limit options unset then, its config has no such keys). Not part of CI's pass/fail.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from services.localbroker import LocalBroker, free_port  # noqa: E402

ADDRESS = "bench-ingress@example.com"


def status_mb(pid: int, field: str) -> float:
    """A memory field (VmRSS, VmHWM) of /proc/PID/status, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(port: int, name: str) -> dict[str, float]:
    """Samples of one metric on the fetcher's /metrics, by their label text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{.*\}})? (\S+)$", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


def head(n: int) -> bytes:
    return (f"From: <c{n}@customer.test>\r\nTo: <{ADDRESS}>\r\nSubject: large {n}\r\n"
            f"Message-ID: <bench-{n}-{time.time_ns()}@customer.test>\r\n\r\n").encode()


def send(n: int, host: str, port: int, body: bytes, deadline: float, deferred: list[str]) -> None:
    """Deliver one message the way an MTA does: SIZE announced, and on a 4xx wait and try again.

    The body (no line starts with a dot, CRLF line ends) is shared by every sender and
    written to the socket as it is, so the client holds no copy of it.
    """
    top = head(n)
    while time.monotonic() < deadline:
        try:
            with smtplib.SMTP(host, port, timeout=120) as client:
                client.ehlo()
                code, reply = client.mail(f"c{n}@customer.test", [f"SIZE={len(top) + len(body)}"])
                if code != 250:
                    raise smtplib.SMTPSenderRefused(code, reply, "")
                client.rcpt(ADDRESS)
                client.putcmd("data")
                client.getreply()
                assert client.sock is not None
                client.sock.sendall(top)
                client.sock.sendall(body)
                client.sock.sendall(b".\r\n")
                code, reply = client.getreply()
                if code == 250:
                    return
                raise smtplib.SMTPDataError(code, reply)
        except (smtplib.SMTPConnectError, smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            if not 400 <= exc.smtp_code < 500:
                raise
            deferred.append(str(exc.smtp_code))
        except smtplib.SMTPServerDisconnected:
            deferred.append("disconnected")
        time.sleep(1.0)
    raise SystemExit(f"message {n} was not accepted in time")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--size-mb", type=float, default=30.0)
    parser.add_argument("--max-sessions", type=int)
    parser.add_argument("--max-inflight-mb", type=int)
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose fetcher runs")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="deskmail-bench-ingress-"))
    smtp_port, metrics_port = free_port(), free_port()
    limits = ""
    if args.max_sessions is not None:
        limits += f"  max_sessions: {args.max_sessions}\n"
    if args.max_inflight_mb is not None:
        limits += f"  max_inflight_bytes: {args.max_inflight_mb * 1024 * 1024}\n"
    size = int(args.size_mb * 1_000_000)
    config = textwrap.dedent(f"""\
        kafka: {{partitions: 1}}
        data_dir: {work / 'data'}
        ingress:
          listen: 127.0.0.1:{smtp_port}
          max_message_bytes: {max(size * 2, 26214400)}
        """) + limits + textwrap.dedent(f"""\
        queues:
          - key: BENCH
            mailboxes:
              - {{address: {ADDRESS}, ingress: true, accept_external: true}}
        """)
    (work / "deskmail.yaml").write_text(config)
    body = (b"x" * 76 + b"\r\n") * (size // 78)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(args.code)}
    with LocalBroker() as broker:
        cli = [sys.executable, "-m", "services.cli"]
        subprocess.run([*cli, "topics", "create", "--config", str(work / "deskmail.yaml"),
                        "--bootstrap", broker.bootstrap], cwd=args.code, env=env, check=True, capture_output=True)
        log = open(work / "fetcher.log", "ab")
        fetcher = subprocess.Popen(
            [*cli, "run", "fetcher", "--config", str(work / "deskmail.yaml"), "--bootstrap", broker.bootstrap,
             "--metrics-port", str(metrics_port)],
            cwd=args.code, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if fetcher.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the fetcher did not start:\n{(work / 'fetcher.log').read_text()[-3000:]}")
                time.sleep(0.2)
            before = status_mb(fetcher.pid, "VmRSS")
            deferred: list[str] = []
            started = time.monotonic()
            threads = [threading.Thread(target=send, args=(n, "127.0.0.1", smtp_port, body, started + 900, deferred))
                       for n in range(args.sessions)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            time.sleep(2.0)
            peak, after = status_mb(fetcher.pid, "VmHWM"), status_mb(fetcher.pid, "VmRSS")
            accepted = sum(metric(metrics_port, "deskmail_fetcher_messages_total").values())
            reasons = metric(metrics_port, "deskmail_fetcher_ingress_deferrals_total")
        finally:
            fetcher.terminate()
            fetcher.wait(timeout=60)
            log.close()
    print(f"{args.sessions} sessions x {size / 1e6:.0f} MB, limits: "
          f"{limits.strip().replace(chr(10), ', ') or 'defaults'} (code: {args.code})")
    print(f"accepted {accepted:.0f} in {elapsed:.1f} s; client retries: {len(deferred)} "
          f"({', '.join(sorted(set(deferred))) or 'none'}); deferrals by reason: "
          f"{ {k: v for k, v in reasons.items() if v} or 'none'}")
    print(f"fetcher RSS: before {before:.0f} MB, peak (VmHWM) {peak:.0f} MB, after {after:.0f} MB")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
