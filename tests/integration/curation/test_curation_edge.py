"""The stream's edge without the broker: staging batches, watermarks in Redis, settling, late events, report."""

import json
from datetime import timedelta

import pytest

from alignloop.db import session_scope
from curation import query, store
from curation.report import build_report
from curation.service import CurationEdge, Record
from curation.settings import Policy

pytestmark = pytest.mark.redis


def _raw(i: int, minute: float, user: str = "u", rating: str = "up") -> bytes:
    from datetime import UTC, datetime

    t = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=minute)
    return json.dumps({"schema_version": 1, "event_id": f"00000000-0000-4000-8000-{i:012d}", "kind": "rating",
                       "occurred_at": t.isoformat(), "app_id": "app", "user_id": f"{user}{i % 7}",
                       "prompt": f"question {i % 5} mail me at x{i}@example.com", "response": "An answer.",
                       "rating": rating}).encode()


def test_stage_settle_by_watermark_and_late_events(store_engine, redis_client):
    policy = Policy(window_s=600, lookahead_s=300, lookback_s=1200)
    edge = CurationEdge(store_engine, redis_client, policy, topic="t", group="g", partitions=2)
    batch = [Record(_raw(i, i * 0.5), i % 2, i) for i in range(40)]  # 0 .. 19.5 minutes
    batch += [Record(b"{not json", 0, 100), Record(json.dumps({"event_id": "00000000-0000-4000-8000-999999999999",
                                                                "kind": "rating"}).encode(), 1, 101)]
    out = edge.handle_batch(batch)
    assert out.staged == 40 and len(out.rejected) == 1 and len(out.dead) == 1
    assert edge.handle_batch(batch).replayed_ids == 40  # a redelivered batch stages nothing new
    # watermark = min over partitions = 19.5 min: window [0, 10) is ready (10 + 5 <= 19.5), [10, 20) is not
    settled = edge.settle_once()
    assert [w.start.minute for w in settled] == [0]
    with session_scope(store_engine) as s:
        counts = store.count_rows(s)
        texts = [t for it in store.load_staged(s, *_span()) for t in it.texts()]
    assert counts["decisions"] == 20 + 1 and counts["dead_letters"] == 1
    assert not [t for t in texts if "@example.com" in t]
    # an event for the settled window arrives late; the rest settles at the end of the stream
    edge.handle_batch([Record(_raw(500, 3.0), 0, 200)])
    edge.settle_once(final=True)
    with session_scope(store_engine) as s:
        decisions = {d["event_id"]: d for d in store.load_decisions(s)}
        rep = build_report(s)
    assert decisions["00000000-0000-4000-8000-000000000500"]["reasons"][0] == "late_event"
    assert len(decisions) == 40 + 1 + 1
    assert rep["rows"]["windows"] == 2 and rep["reasons"]["pii_email"] == 41
    assert rep["apps"]["app"]["events"] == 41


def _span():
    from datetime import UTC, datetime

    return datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


def test_a_settle_while_another_worker_holds_the_lock_reports_that_it_did_nothing(store_engine, redis_client):
    policy = Policy(window_s=600, lookahead_s=300, lookback_s=1200)
    edge = CurationEdge(store_engine, redis_client, policy, topic="t", group="g", partitions=1)
    edge.handle_batch([Record(_raw(i, i * 0.5), 0, i) for i in range(10)])
    other = redis_client.lock(edge._lock_key, timeout=30)
    assert other.acquire(blocking=False)
    try:
        assert edge.settle_once(final=True) is None  # not [] (which means "nothing was ready")
        assert edge.settle_once(final=True, wait_s=0.3) is None
        with session_scope(store_engine) as s:
            assert store.count_rows(s)["decisions"] == 0
    finally:
        other.release()
    assert [w.start.minute for w in edge.settle_once(final=True)] == [0]
    assert edge.settle_once(final=True) == []  # the lock is free and everything is settled


def test_two_apps_with_the_same_event_id_are_both_staged_and_decided(store_engine, redis_client):
    policy = Policy(window_s=600, lookahead_s=300, lookback_s=1200)
    edge = CurationEdge(store_engine, redis_client, policy, topic="t", group="g", partitions=1)
    same = "00000000-0000-4000-8000-00000000beef"

    def raw(app: str, prompt: str) -> bytes:
        return json.dumps({"schema_version": 1, "event_id": same, "kind": "rating",
                           "occurred_at": "2026-11-01T00:01:00+00:00", "app_id": app, "user_id": f"{app}-user",
                           "prompt": prompt, "response": "An answer.", "rating": "up"}).encode()

    batch = [Record(raw("app-a", "How do I pair my watch?"), 0, 1),
             Record(raw("app-b", "How do I cancel my plan?"), 0, 2),
             Record(json.dumps({"event_id": same, "app_id": "app-c", "kind": "rating"}).encode(), 0, 3)]
    assert edge.handle_batch(batch).staged == 2
    assert edge.handle_batch(batch).replayed_ids == 2  # a redelivery is still recognised per app
    edge.settle_once(final=True)
    with session_scope(store_engine) as s:
        decisions = store.load_decisions(s)
        staged = store.load_staged(s, *_span())
        counts = store.count_rows(s)
        refused = query.load_decision(s, same, "app-c")
    assert [(d["event_id"], d["decision"]) for d in decisions] == [(same, "keep"), (same, "keep"), (same, "drop")]
    assert refused == {"event_id": same, "decision": "drop", "reasons": ["contract_schema"]}
    assert sorted(it.app_id for it in staged) == ["app-a", "app-b"]
    assert counts["decisions"] == 3 and counts["unpaired"] == 2
