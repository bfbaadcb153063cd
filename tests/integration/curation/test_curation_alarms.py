"""What curation tells outside the store: the drift alarm (Prometheus counter and report agree) and guard drops
on the `.rejected` topic with their reasons, redacted (real Kafka, real workers)."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from alignloop.core.db import session_scope
from alignloop.core.kafka_auth import kafka_auth
from curation.pii import find_pii
from curation.report import build_report
from curation.service import CurationEdge, Record
from curation.settings import Policy
from support.feed import publish_lines
from support.stream.generate import generate
from support.stream.harness import Workers, expected_ids

START = datetime(2026, 11, 1, tzinfo=UTC)


def _rating(n: int, window: int, up: bool) -> bytes:
    t = START + timedelta(minutes=window * 10 + (n % 20) * 0.4)
    words = uuid.UUID(int=n * 7919 + window).hex
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": str(uuid.UUID(int=10**6 + window * 1000 + n)),
            "kind": "rating",
            "occurred_at": t.isoformat(),
            "app_id": "app-drift",
            "user_id": f"user-{window}-{n}",
            "prompt": f"How do I reset device {words} for case {n}?",
            "response": f"Hold the button {words[:8]} for {n} seconds.",
            "rating": "up" if up else "down",
        }
    ).encode()


@pytest.mark.redis
def test_a_drift_alarm_counts_in_prometheus_and_shows_in_the_report(store_engine):
    def drift() -> float:
        return REGISTRY.get_sample_value("curation_drift_alarms_total", {"app_id": "app-drift"}) or 0.0

    policy = Policy(window_s=600, lookahead_s=60, lookback_s=600)
    edge = CurationEdge(store_engine, None, policy, topic="t", group="g", pseudonym_key=b"k")
    # five windows where 18 of 20 ratings are up, then two where 2 of 20 are
    batch = [Record(_rating(n, w, (n < 18) == (w < 5)), 0, w * 100 + n) for w in range(7) for n in range(20)]
    assert edge.handle_batch(batch).staged == 140
    before = drift()
    edge.settle_once(final=True)
    with session_scope(store_engine) as s:
        alarms = build_report(s)["apps"]["app-drift"]["drift_alarms"]
    assert alarms and alarms[0] == (START + timedelta(minutes=50)).isoformat()
    assert drift() - before == len(alarms)


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
def test_guard_drops_go_to_the_rejected_topic_with_their_reasons_redacted(
    tmp_path, curation_topic, kafka_group, redis_url, kafka_bootstrap
):
    lines, _, _ = generate(seed=4, scale=0.1, hours=2.0)
    publish_lines(kafka_bootstrap, curation_topic, lines)
    workers = Workers(tmp_path, topic=curation_topic, group=kafka_group, redis_url=redis_url, bootstrap=kafka_bootstrap)
    want = expected_ids(lines)
    try:
        workers.start()
        workers.wait_for(lambda c: c["decisions"] >= want and c["outbox"] == 0, 240, f"{want} decisions, all sent")
        out = workers.outputs()
    finally:
        workers.stop_all()
    messages = [(k.decode(), json.loads(m)) for k, m in _read_keyed(kafka_bootstrap, f"{curation_topic}.rejected")]
    assert not [m for _, m in messages if find_pii(json.dumps(m, ensure_ascii=False))]
    last = {}
    for key, m in messages:
        if "stage" in m:  # a guard drop (a contract refusal carries `errors` instead); keyed by its event id
            last[key] = m
    dropped = {
        d["event_id"]: d
        for d in out["decisions"]
        if d["decision"] == "drop" and not d["reasons"][0].startswith("contract_")
    }
    assert dropped and set(last) == set(dropped)
    assert [(last[e], d) for e, d in dropped.items() if last[e]["reasons"] != d["reasons"]] == []
    assert [m for m in last.values() if not m["policy_hash"]] == []
    # the record is the staged one (ids pseudonymised, texts redacted), every string redacted again
    assert all(m["event"]["kind"] in ("rating", "edit", "comparison") and m["event"]["prompt"] for m in last.values())


def _read_keyed(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        group_id=None,
        **kafka_auth(),
    )
    try:
        return [(m.key, m.value) for m in consumer]
    finally:
        consumer.close()
