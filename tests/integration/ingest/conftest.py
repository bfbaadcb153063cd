"""Fixtures for ingest against the real broker: a topic set of its own, an API key store, a live gateway."""

from __future__ import annotations

import uuid

import pytest

from support.gateway import LiveGateway, gateway_config, make_key
from support.kafka_topics import delete_topics


@pytest.fixture
def ingest_topic(kafka_bootstrap) -> str:
    """A fresh feedback topic (and its .rejected and .dlq), 6 partitions, made by ensure_topics."""
    from ingest.topics import ensure_topics, topic_names

    base = f"test-feedback-{uuid.uuid4().hex[:10]}"
    ensure_topics(kafka_bootstrap, 6, base=base)
    yield base
    delete_topics(kafka_bootstrap, list(topic_names(base)))


@pytest.fixture
def key_engine(sqlite_engine):
    from alignloop.core.db import upgrade

    upgrade(sqlite_engine)
    return sqlite_engine


@pytest.fixture
def gateway(kafka_bootstrap, ingest_topic, key_engine):
    """A live gateway on `ingest_topic`, with an API key for app `shop-bot` (and one for `other-app`)."""
    cfg = gateway_config(kafka_bootstrap, ingest_topic, key_engine)
    with LiveGateway(cfg) as live:
        live.topic = ingest_topic
        live.engine = key_engine
        live.key_id, live.key = make_key(key_engine, "shop-bot")
        _, live.other_key = make_key(key_engine, "other-app")
        yield live
