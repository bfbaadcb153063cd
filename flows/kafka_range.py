"""Reads a bounded range of a Kafka topic (by offsets or by event timestamps) for re-curation."""

from __future__ import annotations

from datetime import datetime

from alignloop.core.kafka_auth import kafka_auth
from flows.errors import FlowsError


def read_range(
    bootstrap: str,
    topic: str,
    *,
    start_offsets: dict[int, int] | None = None,
    end_offsets: dict[int, int] | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    timeout_s: float = 60.0,
) -> list[bytes]:
    """Raw values of `topic` in [start, end) per partition; the end defaults to the end of the log at call time."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        **kafka_auth(),
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise FlowsError(f"topic {topic!r} does not exist on {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        begin, latest = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        starts = {tp: begin[tp] for tp in tps}
        ends = dict(latest)
        if start_time is not None:
            found = consumer.offsets_for_times({tp: int(start_time.timestamp() * 1000) for tp in tps})
            starts = {tp: (found[tp].offset if found[tp] else latest[tp]) for tp in tps}
        if end_time is not None:
            found = consumer.offsets_for_times({tp: int(end_time.timestamp() * 1000) for tp in tps})
            ends = {tp: (found[tp].offset if found[tp] else latest[tp]) for tp in tps}
        for p, off in (start_offsets or {}).items():
            starts[TopicPartition(topic, int(p))] = int(off)
        for p, off in (end_offsets or {}).items():
            ends[TopicPartition(topic, int(p))] = int(off)
        values: list[tuple[int, int, bytes]] = []
        for tp in tps:
            if starts[tp] >= ends[tp]:
                continue
            consumer.seek(tp, starts[tp])
        pending = {tp for tp in tps if starts[tp] < ends[tp]}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise FlowsError(f"reading {topic!r} stalled for {timeout_s:.0f} s before the end of the range")
            batch = consumer.poll(timeout_ms=1000)
            if not batch and not any(consumer.position(tp) < ends[tp] for tp in pending):
                break
            for tp, records in batch.items():
                for r in records:
                    if r.offset < ends[tp]:
                        values.append((r.timestamp, r.offset, r.value))
                if consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
        values.sort(key=lambda v: (v[0], v[1]))  # broker time order across partitions
        return [v for _, _, v in values]
    finally:
        consumer.close()
