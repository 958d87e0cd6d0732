"""The key's partition is Kafka's: the fast murmur2 equals kafka-python's, byte for byte."""

from __future__ import annotations

import random

import pytest
from kafka.partitioner.default import DefaultPartitioner
from kafka.partitioner.default import murmur2 as kafka_murmur2

from services.common.kafka import KeyPartitioner
from services.common.partitioning import KeyHashes, murmur2, partition_of


def test_murmur2_matches_kafka_python_for_every_length_and_tail() -> None:
    rng = random.Random(11)
    for length in range(0, 130):
        for _ in range(10):
            data = rng.randbytes(length)
            assert murmur2(data) == kafka_murmur2(data), data


@pytest.mark.parametrize(("key", "expected"), [
    # The Java client's values (org.apache.kafka.common.utils.UtilsTest.testMurmur2).
    (b"21", -973932308 & 0xFFFFFFFF),
    (b"foobar", -790332482 & 0xFFFFFFFF),
    (b"a-little-bit-long-string", -985981536 & 0xFFFFFFFF),
    (b"a-little-bit-longer-string", -1486304829 & 0xFFFFFFFF),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971 & 0xFFFFFFFF),
    (b"abc", 479470107),
])
def test_murmur2_known_values(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_key_hashes_stay_bounded_and_right() -> None:
    hashes = KeyHashes(size=8)
    keys = [f"<{i}@example.com>".encode() for i in range(50)]
    for key in keys * 2:
        assert hashes(key) == murmur2(key) & 0x7FFFFFFF
        assert len(hashes._known) <= 8


class _Cluster:
    def __init__(self, partitions: int):
        self.partitions = set(range(partitions))

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions if topic == "t" else None

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions


@pytest.mark.parametrize("partitions", [1, 3, 4, 16])
def test_key_partitioner_agrees_with_kafka_python(partitions: int) -> None:
    cluster = _Cluster(partitions)
    ours, theirs = KeyPartitioner(), DefaultPartitioner()
    for i in range(300):
        key = f"<{i}.{partitions}@customer.test>".encode()
        expected = theirs.partition("t", key, key, b"v", b"v", cluster)
        assert ours.partition("t", key, key, b"v", b"v", cluster) == expected
        assert partition_of(key, partitions) == expected
    assert ours.partition("t", None, None, b"v", b"v", cluster) in cluster.partitions  # unkeyed: any


def test_key_partitioner_refuses_an_unknown_topic() -> None:
    with pytest.raises(ValueError):
        KeyPartitioner().partition("other", b"k", b"k", b"v", b"v", _Cluster(4))
