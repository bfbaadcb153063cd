"""The SDK against the real broker: 10,000 events arrive exactly once, keyed by conversation; failures surface."""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict

import pytest

from alignloop.core.kafka_auth import kafka_auth
from ingest.client import FeedbackClient
from ingest.errors import DeliveryError, EventError
from support.kafka_topics import event_ids, read_topic

pytestmark = pytest.mark.kafka


def test_ten_thousand_events_arrive_exactly_once(kafka_bootstrap, ingest_topic):
    sent: list[str] = []
    errors: list[BaseException] = []
    with FeedbackClient(
        "shop-bot", kafka_bootstrap, topic=ingest_topic, on_error=lambda e, exc: errors.append(exc)
    ) as client:
        for i in range(10_000):
            kind = i % 3
            if kind == 0:
                d = client.rate(
                    user_id=f"u{i % 97}",
                    prompt=f"question {i % 500}",
                    response="answer",
                    rating="up" if i % 2 else "down",
                    session_id=f"s{i % 300}",
                )
            elif kind == 1:
                d = client.edit(
                    user_id=f"u{i % 97}",
                    prompt=[{"role": "user", "content": f"q {i}"}],
                    response="a",
                    edited="better a",
                )
            else:
                d = client.compare(user_id="u", prompt=f"q {i}", responses=["a", "b"], chosen=None)
            sent.append(d.event_id)
    assert not errors
    on_topic = Counter(event_ids(read_topic(kafka_bootstrap, ingest_topic)))
    assert len(on_topic) == 10_000 and set(on_topic) == set(sent)
    assert max(on_topic.values()) == 1, "an event arrived twice"


def test_one_conversation_stays_in_one_partition(kafka_bootstrap, ingest_topic):
    with FeedbackClient("shop-bot", kafka_bootstrap, topic=ingest_topic) as client:
        deliveries = [
            client.rate(user_id="u", prompt=f"turn {i}", response="r", rating="up", session_id=f"conv-{i % 5}")
            for i in range(100)
        ]
        client.flush()
    partitions = defaultdict(set)
    for d in deliveries:
        partitions[d.event.session_id].add(d.result(timeout=10).partition)
    assert all(len(p) == 1 for p in partitions.values())
    assert len(set().union(*partitions.values())) > 1, "5 conversations all hashed to one partition"


def test_delivery_is_a_future_with_callbacks(kafka_bootstrap, ingest_topic):
    seen = []
    with FeedbackClient("shop-bot", kafka_bootstrap, topic=ingest_topic) as client:
        d = client.rate(user_id="u", prompt="p", response="r", rating="down")
        d.add_done_callback(lambda delivery: seen.append(delivery.event_id))
        meta = d.result(timeout=10)
    assert meta.topic == ingest_topic and d.succeeded() and seen == [d.event_id]
    value = read_topic(kafka_bootstrap, ingest_topic)[0]
    assert json.loads(value)["rating"] == "down"


def test_a_bad_event_raises_before_anything_is_sent(kafka_bootstrap, ingest_topic):
    with FeedbackClient("shop-bot", kafka_bootstrap, topic=ingest_topic) as client:
        with pytest.raises(EventError) as info:
            client.rate(user_id="u", prompt="p", response="r", rating="meh")
        assert info.value.errors[0]["loc"] == "rating"
        with pytest.raises(EventError, match="app_id"):
            client.send(
                {
                    "schema_version": 1,
                    "kind": "rating",
                    "event_id": str(uuid.uuid4()),
                    "occurred_at": "2026-01-01T00:00:00Z",
                    "app_id": "other-app",
                    "user_id": "u",
                    "prompt": "p",
                    "response": "r",
                    "rating": "up",
                }
            )
    assert read_topic(kafka_bootstrap, ingest_topic) == []


def test_retry_reuses_the_event_id(kafka_bootstrap, ingest_topic):
    with FeedbackClient("shop-bot", kafka_bootstrap, topic=ingest_topic) as client:
        first = client.rate(user_id="u", prompt="p", response="r", rating="up")
        again = client.send(first.event)  # what a caller does with DeliveryError.failures
    assert again.event_id == first.event_id


def test_a_send_kafka_cannot_queue_raises_at_once(kafka_bootstrap):
    with (
        FeedbackClient("shop-bot", kafka_bootstrap, topic="not a topic name!") as client,
        pytest.raises(DeliveryError) as info,
    ):
        client.rate(user_id="u", prompt="p", response="r", rating="up")
    assert info.value.failures[0][0].kind == "rating"


@pytest.mark.parametrize("with_callback", [True, False])
def test_a_refused_delivery_reaches_the_future_the_callback_and_flush(kafka_bootstrap, with_callback):
    """The broker refuses the record (larger than the topic allows): nothing is dropped silently."""
    from kafka import KafkaAdminClient

    from support.kafka_topics import delete_topics

    topic = f"test-tiny-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, **kafka_auth())
    admin.create_topics(
        {topic: {"num_partitions": 1, "replication_factor": 1, "configs": {"max.message.bytes": "300"}}}
    )
    admin.close()
    heard = []
    client = FeedbackClient(
        "shop-bot",
        kafka_bootstrap,
        topic=topic,
        delivery_timeout_ms=15_000,
        on_error=(lambda event, exc: heard.append(str(event.event_id))) if with_callback else None,
    )
    try:
        d = client.rate(user_id="u", prompt="p" * 1000, response="r", rating="up")
        if not with_callback:
            heard.append(d.event_id)  # nothing to hear: the future and flush must still say it
        with pytest.raises(DeliveryError) as from_future:
            d.result(timeout=30)
        with pytest.raises(DeliveryError) as from_flush:
            client.close(timeout=30)
        assert from_future.value.failures[0][0] == d.event
        assert [str(e.event_id) for e, _ in from_flush.value.failures] == [d.event_id] == heard
        assert not d.succeeded() and d.done()
        assert read_topic(kafka_bootstrap, topic) == []
    finally:
        delete_topics(kafka_bootstrap, [topic])
