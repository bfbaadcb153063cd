"""The SDK's memoising partitioner places every key where kafka-python's default partitioner does."""

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner import DefaultPartitioner

from alignloop_sdk.client import _memo_partitioner


class _Cluster:
    def __init__(self, n: int):
        self.n = n

    def topics(self):
        return {"t"}

    def partitions_for_topic(self, _topic):
        return set(range(self.n))

    def available_partitions_for_topic(self, _topic):
        return set(range(self.n))


@settings(max_examples=200)
@given(
    keys=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=30),
    counts=st.lists(st.integers(1, 12), min_size=1, max_size=3),
)
def test_memo_partitioner_agrees_with_the_default_even_when_partitions_change(keys, counts):
    memo, default = _memo_partitioner(size=8), DefaultPartitioner()  # a small memo also exercises clearing
    for n in counts:  # partitions added between sends: a remembered key must move with the count
        cluster = _Cluster(n)
        for key in keys + keys:
            want = default.partition("t", key, key, None, None, cluster)
            assert memo.partition("t", key, key, None, None, cluster) == want
