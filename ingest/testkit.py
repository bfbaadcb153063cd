"""Helpers for tests and benchmarks against real services: read a topic to its end, serve the gateway in a thread."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any


def read_topic(bootstrap: str, topic: str, *, timeout: float = 60.0) -> list[bytes]:
    """Every value now on `topic`, read from the beginning to the end offsets of each partition."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             fetch_max_bytes=50 * 1024 * 1024, max_poll_records=5000)
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

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics(names)
    except Exception:
        pass  # cleanup only: names are unique
    finally:
        admin.close()


def make_key(engine, app_id: str) -> tuple[str, str]:
    """(key_id, key) of a new API key for `app_id` in the store behind `engine`."""
    from alignloop.db import session_scope
    from ingest.store import create_key

    with session_scope(engine) as session:
        record, key = create_key(session, app_id)
    return record.key_id, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_config(bootstrap: str, topic: str, engine, **overrides: Any):
    """A GatewayConfig reading API keys from the store behind `engine`."""
    from alignloop.db import session_scope
    from ingest.gateway import GatewayConfig
    from ingest.store import find_app_for_key

    def find_app(key: str) -> str | None:
        with session_scope(engine) as session:
            return find_app_for_key(session, key)

    values: dict[str, Any] = dict(bootstrap=bootstrap, topic=topic, find_app=find_app, source_key=b"test-source-key",
                                  partitions=6, produce_timeout_s=5.0, key_cache_s=0.5)
    values.update(overrides)
    return GatewayConfig(**values)


class LiveGateway:
    """The gateway app served by uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, cfg):
        import uvicorn

        from ingest.gateway import create_app

        self.app = create_app(cfg)
        # host and port, not a pre-bound socket: uvicorn serving a handed-in socket answers ~40 ms late
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveGateway:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
