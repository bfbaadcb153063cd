"""Kafka for tests and benchmarks: read a topic to its end, the event ids on it, delete topics."""

from __future__ import annotations

import json
import time

from alignloop.core.kafka_auth import kafka_auth


def read_topic(bootstrap: str, topic: str, *, timeout: float = 60.0) -> list[bytes]:
    """Every value now on `topic`, read from the beginning to the end offsets of each partition."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        **kafka_auth(),
        enable_auto_commit=False,
        group_id=None,
        fetch_max_bytes=50 * 1024 * 1024,
        max_poll_records=5000,
    )
    try:
        parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or [])]
        if not parts:
            raise RuntimeError(f"topic {topic} has no partitions")
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} not read to its end within {timeout} s")
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
        return values
    finally:
        consumer.close()


def event_ids(values: list[bytes]) -> list[str]:
    return [json.loads(v)["event_id"] for v in values]


def delete_topics(bootstrap: str, names: list[str]) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_auth())
    try:
        admin.delete_topics(names)
    except Exception:
        pass  # cleanup only: names are unique
    finally:
        admin.close()
