"""The ingest topics on Kafka: names, retention, and an idempotent `ensure_topics` run at start-up."""

from __future__ import annotations

from alignloop.core.kafka_auth import kafka_auth
from alignloop_sdk.events import FEEDBACK_TOPIC
from ingest.errors import IngestError

__all__ = ["DLQ_TOPIC", "FEEDBACK_TOPIC", "REJECTED_TOPIC", "TOPIC_CONFIGS", "ensure_topics", "topic_names"]
REJECTED_TOPIC = f"{FEEDBACK_TOPIC}.rejected"
DLQ_TOPIC = f"{FEEDBACK_TOPIC}.dlq"

_DAY_MS = 24 * 3600 * 1000
# Why these: feedback is replayed into curation after a bug fix, so it is kept 30 days; rejected events
# are kept as long (they are replayable after a rule change); dead letters are kept 90 days for forensics.
# An event is at most 64 KiB, a producer batch a few of them: 1 MiB messages leave room for batching.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    FEEDBACK_TOPIC: {
        "retention.ms": str(30 * _DAY_MS),
        "cleanup.policy": "delete",
        "max.message.bytes": str(1024 * 1024),
    },
    REJECTED_TOPIC: {
        "retention.ms": str(30 * _DAY_MS),
        "cleanup.policy": "delete",
        "max.message.bytes": str(1024 * 1024),
    },
    DLQ_TOPIC: {
        "retention.ms": str(90 * _DAY_MS),
        "cleanup.policy": "delete",
        "max.message.bytes": str(2 * 1024 * 1024),
    },
}
_TOPIC_ALREADY_EXISTS = 36


def topic_names(base: str = FEEDBACK_TOPIC) -> tuple[str, str, str]:
    """The feedback, rejected and dead-letter topic names for a base name (tests use their own base)."""
    return base, f"{base}.rejected", f"{base}.dlq"


def ensure_topics(
    bootstrap: str,
    partitions: int = 6,
    *,
    base: str = FEEDBACK_TOPIC,
    replication_factor: int | None = None,
    timeout_ms: int = 15000,
) -> dict[str, str]:
    """Create the feedback, rejected and DLQ topics when missing; returns {name: "created"|"exists"}.

    Safe to call from many processes at once: an existing topic is left as it is (partitions are never
    changed here, since that would move conversations between partitions).
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    if partitions < 1:
        raise IngestError(f"`partitions` must be at least 1; got {partitions}")
    from alignloop.core.settings import get_settings

    names = topic_names(base)
    # acks=all only means "all in-sync replicas": min.insync.replicas is what makes it more than one
    isr = {"min.insync.replicas": str(get_settings().kafka_min_insync_replicas)}
    configs = [{**TOPIC_CONFIGS[n], **isr} for n in topic_names(FEEDBACK_TOPIC)]
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            **kafka_auth(),
            request_timeout_ms=timeout_ms,
            client_id="alignloop-ingest-admin",
        )
    except KafkaError as exc:
        raise IngestError(f"Kafka at {bootstrap} is not reachable to create topics: {exc!r}") from exc
    try:
        existing = set(admin.list_topics())
        if replication_factor is None:
            replication_factor = min(3, len(admin.describe_cluster()["brokers"]))
        missing = {n: c for n, c in zip(names, configs) if n not in existing}
        result = {n: "exists" for n in names if n in existing}
        if missing:
            spec = {
                n: {"num_partitions": partitions, "replication_factor": replication_factor, "configs": c}
                for n, c in missing.items()
            }
            response = admin.create_topics(spec, timeout_ms=timeout_ms, raise_errors=False, wait_for_metadata=True)
            for topic in _topics_of(response):
                code = topic.get("error_code", 0)
                if code == _TOPIC_ALREADY_EXISTS:
                    result[topic["name"]] = "exists"
                elif code:
                    raise IngestError(
                        f"creating topic {topic['name']!r} failed: error {code} {topic.get('error_message')}"
                    )
                else:
                    result[topic["name"]] = "created"
        return result
    except KafkaError as exc:
        raise IngestError(f"topics on {bootstrap} could not be checked or created: {exc!r}") from exc
    finally:
        admin.close()


def _topics_of(response) -> list[dict]:
    data = response if isinstance(response, dict) else getattr(response, "to_dict", lambda: {})()
    return [dict(t) for t in data.get("topics", [])]
