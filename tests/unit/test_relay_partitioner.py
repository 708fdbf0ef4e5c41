"""The relay's partitioner: exactly Kafka's default (murmur2 of the key), as aiokafka computes it,
so every producer of the ledger topic sends a person's records to the same partition."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.relay import KeyPartitioner, murmur2


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_murmur2_is_kafkas(key):
    assert murmur2(key) == aiokafka_murmur2(key)


def test_murmur2_of_known_keys():
    # values of the Java client's Utils.murmur2 (as unsigned), which aiokafka reproduces
    for key in (b"", b"a", b"ab", b"abc", b"abcd", b"fd01ee777a8c3bceeea14904907f785f"):
        assert murmur2(key) == aiokafka_murmur2(key)


@settings(max_examples=300)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=50), st.integers(1, 64))
def test_partitions_are_the_default_partitioners(keys, count):
    partitions = list(range(count))
    ours, default = KeyPartitioner(keep=7), DefaultPartitioner()
    for key in keys + keys:  # the second round comes from the kept hashes (or after a clear)
        assert ours(key, partitions) == default(key, partitions, partitions)
