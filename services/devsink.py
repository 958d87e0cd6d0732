"""A local SMTP sink for `deskmail up`: outgoing mail lands in a folder instead of the world.

``python -m services.devsink --listen 127.0.0.1:2526 --dir deskmail-data/sent-mail``
accepts every message for every recipient (no AUTH, no TLS: loopback only) and
writes each one as ``<UTC time>-<n>-<sha256 prefix>.eml`` in the folder, with
``Return-Path`` and ``Delivered-To`` trace headers in front of the bytes it
received. The file is written under a temporary name, fsynced and renamed, so a
reader never sees half a message; ``250`` comes after the rename. SIGTERM or
SIGINT stops it (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from services.common.config import HostPort
from services.common.runtime import setup_logging

log = logging.getLogger("deskmail.devsink")


def trace_headers(mail_from: str | None, rcpt_tos: list[str]) -> bytes:
    """What a final delivery adds in front of a message: the envelope it came with."""
    sender = "" if mail_from in (None, "<>") else mail_from
    lines = [f"Return-Path: <{sender}>"] + [f"Delivered-To: {rcpt}" for rcpt in rcpt_tos]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def save(folder: Path, data: bytes, sequence: int) -> Path:
    """Write one message atomically (temporary file, fsync, rename); returns its path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = folder / f"{stamp}-{sequence:05d}-{hashlib.sha256(data).hexdigest()[:12]}.eml"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".eml")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class Sink:
    """aiosmtpd handler that saves every message."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.sequence = itertools.count(1)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 (aiosmtpd)
        data = trace_headers(envelope.mail_from, envelope.rcpt_tos) + (envelope.original_content or b"")
        try:
            path = await asyncio.get_running_loop().run_in_executor(None, save, self.folder, data,
                                                                    next(self.sequence))
        except OSError as exc:
            log.error("cannot save a message", extra={"error": str(exc)})
            return "451 4.3.0 Cannot save the message"
        log.info(f"saved {path.name}", extra={"address": ",".join(envelope.rcpt_tos)})
        return "250 2.0.0 Ok: saved"


async def serve(host: str, port: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    handler = Sink(folder)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="deskmail-devsink", ident="deskmail devsink", enable_SMTPUTF8=True,
                     data_size_limit=None),
        host, port, reuse_address=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("mail sink listening", extra={"address": f"{host}:{port}", "url": str(folder)})
    await stop.wait()
    server.close()
    await server.wait_closed()
    log.info("mail sink stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.devsink", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:2526", help="HOST:PORT (default: %(default)s)")
    parser.add_argument("--dir", required=True, type=Path, help="Folder for the .eml files.")
    args = parser.parse_args(argv)
    setup_logging()
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
    listen = HostPort.parse(args.listen)
    host, port = listen.host, listen.port
    try:
        asyncio.run(serve(host, port, args.dir))
    except OSError as exc:
        log.error("mail sink cannot start", extra={"address": args.listen, "error": str(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
