"""ensure_topics against the real broker: creates what is missing, leaves what exists, with retention set."""

from __future__ import annotations

import uuid

import pytest

from alignloop.core.kafka_auth import kafka_auth
from ingest.topics import FEEDBACK_TOPIC, TOPIC_CONFIGS, ensure_topics, topic_names
from support.kafka_topics import delete_topics

pytestmark = pytest.mark.kafka


def test_ensure_topics_is_idempotent_and_sets_retention_and_min_insync_replicas(kafka_bootstrap, monkeypatch):
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    from alignloop.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "kafka_min_insync_replicas", 1)  # the one broker: acks=all waits for it
    base = f"test-topics-{uuid.uuid4().hex[:10]}"
    names = list(topic_names(base))
    try:
        assert ensure_topics(kafka_bootstrap, 4, base=base) == {n: "created" for n in names}
        assert ensure_topics(kafka_bootstrap, 9, base=base) == {n: "exists" for n in names}
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, **kafka_auth())
        try:
            described = {t["name"]: t for t in admin.describe_topics(names)}
            assert {n: len(described[n]["partitions"]) for n in names} == {n: 4 for n in names}
            configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        finally:
            admin.close()
        text = repr(configs)
        assert TOPIC_CONFIGS[FEEDBACK_TOPIC]["retention.ms"] in text
        isr = {n: configs["topic"][n]["min.insync.replicas"] for n in names}
        assert {n: (c["value"], c["config_source"]) for n, c in isr.items()} == {
            n: ("1", "DYNAMIC_TOPIC_CONFIG") for n in names
        }  # set on the topic, not the broker's default
    finally:
        delete_topics(kafka_bootstrap, names)


def test_partitions_must_be_positive(kafka_bootstrap):
    from ingest.errors import IngestError

    with pytest.raises(IngestError, match="partitions"):
        ensure_topics(kafka_bootstrap, 0, base="never-created")
