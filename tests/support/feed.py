"""Put a JSON-lines event file onto the feedback topic (tests, benchmarks, backfills); keyed like the gateway."""

from __future__ import annotations

import json
from collections.abc import Iterable

from alignloop.core.kafka_auth import kafka_auth


def key_of(line: bytes) -> bytes | None:
    """The gateway's key (app + conversation hash) for a valid event; None (round-robin) for unreadable bytes."""
    from ingest.events import event_key, parse_event

    try:
        return event_key(parse_event(line))
    except Exception:  # noqa: BLE001 - malformed lines are fed as they are, that is the point
        try:
            data = json.loads(line)
            return str(data.get("app_id", "")).encode() + b":" + str(data.get("prompt", ""))[:200].encode()
        except Exception:  # noqa: BLE001
            return None


def publish_lines(bootstrap: str, topic: str, lines: Iterable[bytes | str]) -> int:
    """Send every line as one message (acks=all, idempotent producer); returns how many were sent."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        **kafka_auth(),
        acks="all",
        enable_idempotence=True,
        max_request_size=2 * 1024 * 1024,
        linger_ms=5,
    )
    n = 0
    try:
        for line in lines:
            raw = line.encode() if isinstance(line, str) else line
            raw = raw.rstrip(b"\r\n")
            if not raw:
                continue
            producer.send(topic, key=key_of(raw), value=raw)
            n += 1
        producer.flush(60)
    finally:
        producer.close()
    return n
