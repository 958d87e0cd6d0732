"""Which partition a keyed record goes to: Kafka's own rule (murmur2 of the key,
positive, modulo the partition count), as the Java client and kafka-python's
default partitioner compute it, so every producer of a topic (this one, an older
deskmail, a tool) puts a key on the same partition and its order holds.

kafka-python's murmur2 reads the key byte by byte in Python; this one reads it a
32-bit word at a time (same result, tested against it), and ``KeyHashes`` keeps
the hashes of recent keys: the fetcher sends every record of a mailbox with the
same key, and a thread's replies share the key of its first mail.
"""

from __future__ import annotations

import struct

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit MurmurHash2 of ``data`` with Kafka's seed (org.apache.kafka.common.utils.Utils.murmur2)."""
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length & 3
    if tail:
        base = words << 2
        if tail >= 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition_of(key: bytes, partitions: int) -> int:
    """The index (into the sorted partition ids) a key goes to among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class KeyHashes:
    """``murmur2`` of recent keys, at most ``size`` of them (the oldest half is
    dropped when full). Safe to share between threads: at worst a hash is computed
    twice."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._known: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        found = self._known.get(key)
        if found is None:
            found = murmur2(key) & 0x7FFFFFFF
            if len(self._known) >= self.size:
                for old in list(self._known)[: self.size // 2]:
                    self._known.pop(old, None)
            self._known[key] = found
        return found
