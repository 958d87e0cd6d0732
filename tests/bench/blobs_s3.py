"""Streaming a large blob into S3: parts while it arrives (the store's way) or a local file uploaded at commit.

    .venv/bin/python tests/bench/blobs_s3.py [--size-mb 30] [--piece-mb 4] [--rounds 3]

Starts moto in server mode (tests/harness/s3.py) and streams ``--size-mb`` of random
bytes in ``--piece-mb`` pieces (the fetcher's IMAP pieces are 4 MiB) two ways:

- ``parts``: ``S3BlobWriter``: a multipart upload to a temporary key while the pieces
  arrive, then at commit the last part, CompleteMultipartUpload, CopyObject to the
  content key and the temporary object deleted;
- ``file``: the pieces to a local temporary file, hashed on the way, and at commit one
  HEAD and the whole file uploaded to the content key (boto3's ``upload_fileobj``:
  8 MiB parts on 10 threads).

Prints, per way, the median time spent in the writes, in the commit, and the peak of
Python's own allocations during the stream (tracemalloc; the pieces themselves are
made fresh and dropped, as the fetcher does). Not part of CI's pass/fail.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.common.blobs import ref_for_sha256  # noqa: E402
from services.common.blobs_s3 import S3BlobStore  # noqa: E402
from tests.harness.s3 import S3Server  # noqa: E402

MB = 1024 * 1024


def by_parts(store: S3BlobStore, pieces: Callable[[], bytes], count: int) -> tuple[float, float]:
    started = time.perf_counter()
    writer = store.writer()
    for _ in range(count):
        writer.write(pieces())
    written = time.perf_counter()
    writer.commit()
    return written - started, time.perf_counter() - written


def by_file(store: S3BlobStore, pieces: Callable[[], bytes], count: int) -> tuple[float, float]:
    started = time.perf_counter()
    digest = hashlib.sha256()
    with tempfile.TemporaryFile() as spool:
        for _ in range(count):
            piece = pieces()
            spool.write(piece)
            digest.update(piece)
        written = time.perf_counter()
        key = store.key(ref_for_sha256(digest.hexdigest()))
        if store.size_of(key) is None:
            spool.seek(0)
            store.s3.upload_fileobj(spool, store.bucket, key)
    return written - started, time.perf_counter() - written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=30)
    parser.add_argument("--piece-mb", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    count = args.size_mb // args.piece_mb

    def pieces() -> bytes:
        return os.urandom(args.piece_mb * MB)

    with tempfile.TemporaryDirectory() as folder:
        server = S3Server(Path(folder) / "moto.log")
        server.start()
        try:
            store = S3BlobStore(server.settings(server.bucket()))
            print(f"{count} pieces of {args.piece_mb} MiB, {args.rounds} rounds, moto at {server.endpoint_url}")
            for name, way in (("parts", by_parts), ("file", by_file)):
                writes, commits, peaks = [], [], []
                for _ in range(args.rounds):
                    tracemalloc.start()
                    write_s, commit_s = way(store, pieces, count)
                    peaks.append(tracemalloc.get_traced_memory()[1] / MB)
                    tracemalloc.stop()
                    writes.append(write_s)
                    commits.append(commit_s)
                print(f"{name:>5}: writes {statistics.median(writes):.2f} s, commit {statistics.median(commits):.2f} s, "
                      f"peak Python allocations {statistics.median(peaks):.0f} MiB")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
