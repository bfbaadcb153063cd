"""The stream's edge without the broker: staging batches, watermarks in Redis, settling, late events, report."""

import json
from datetime import timedelta

import pytest

from alignloop.core.db import session_scope
from curation import query, store
from curation.report import build_report
from curation.service import CurationEdge, Record
from curation.settings import Policy

pytestmark = pytest.mark.redis


def _raw(i: int, minute: float, user: str = "u", rating: str = "up") -> bytes:
    from datetime import UTC, datetime

    t = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=minute)
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": f"00000000-0000-4000-8000-{i:012d}",
            "kind": "rating",
            "occurred_at": t.isoformat(),
            "app_id": "app",
            "user_id": f"{user}{i % 7}",
            "prompt": f"question {i % 5} mail me at x{i}@example.com",
            "response": "An answer.",
            "rating": rating,
        }
    ).encode()


def test_stage_settle_by_watermark_and_late_events(store_engine, redis_client):
    policy = Policy(window_s=600, lookahead_s=300, lookback_s=1200)
    edge = CurationEdge(store_engine, redis_client, policy, topic="t", group="g", partitions=2)
    batch = [Record(_raw(i, i * 0.5), i % 2, i) for i in range(40)]  # 0 .. 19.5 minutes
    batch += [
        Record(b"{not json", 0, 100),
        Record(json.dumps({"event_id": "00000000-0000-4000-8000-999999999999", "kind": "rating"}).encode(), 1, 101),
    ]
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


def test_no_pii_reaches_the_store_or_the_rejected_and_dead_letter_topics(store_engine):
    """E-mails, phones and cards, plain and behind JSON escapes, in every field and id: the store's tables and the
    `.rejected`/`.dlq` messages hold none of them, and ids are the keyed pseudonyms the guards counted by."""
    from sqlalchemy import text

    from curation.pii import pseudonymise, unescape_json_text

    email, phone, card = "jane.doe@example.com", "+44 20 7946 0958", "4111 1111 1111 1111"
    secrets = (email, phone, card, "jane.doe", "7946 0958", "4111 1111")
    pii = f"mail {email} call {phone} card {card}"

    def event(i: int, **patch) -> dict:
        return {
            "schema_version": 1,
            "kind": "edit",
            "event_id": f"00000000-0000-4000-8000-{i:012d}",
            "occurred_at": f"2026-11-01T00:{i:02d}:00Z",
            "app_id": "app",
            "user_id": f"{email} {i % 2}",
            "session_id": pii[:200],
            "adapter_version": f"v1 {email}",
            "metadata": {email: pii},
            "client": {"device_id": f"{phone} {i % 2}", "ip_hash": email},
            "prompt": [{"role": "system", "content": pii}, {"role": "user", "content": f"{pii} q{i}"}],
            "response": f"{pii} answer {i}",
            "edited": f"Sure! {pii} better answer {i}",
            **patch,
        }

    def escaped(data: dict) -> bytes:
        return json.dumps(data, separators=(",", ":")).replace("@", "\\u0040").replace(" ", "\\u0020").encode()

    raws = [escaped(event(i)) if i % 2 else json.dumps(event(i)).encode() for i in range(10)]
    raws += [escaped(event(20, edited=None, rating=pii)), escaped(event(21))[:-40]]  # rejected, dead letter
    edge = CurationEdge(
        store_engine,
        None,
        Policy(window_s=3600, lookahead_s=0, lookback_s=3600),
        topic="t",
        group="g",
        partitions=1,
        pseudonym_key=b"the-key",
    )
    out = edge.handle_batch([Record(r, 0, i) for i, r in enumerate(raws)])
    assert (out.staged, len(out.rejected), len(out.dead)) == (10, 1, 1)
    assert edge.settle_once(final=True)
    sent = [m.decode() for _, m in out.rejected] + [m.decode() for m in out.dead]
    with store_engine.connect() as conn:
        stored = [
            str(tuple(row))
            for table in (
                "curation_events",
                "curation_decisions",
                "curation_pairs",
                "curation_unpaired",
                "curation_windows",
                "curation_dead_letters",
            )
            for row in conn.execute(text(f"SELECT * FROM {table}"))
        ]
        users = {r[0] for r in conn.execute(text("SELECT user_id FROM curation_decisions WHERE user_id IS NOT NULL"))}
    assert len(stored) > 12
    for blob in stored + sent:
        assert not [s for s in secrets if s in blob or s in unescape_json_text(blob)], blob
    assert users == {pseudonymise(b"the-key", "user_id", f"{email} {k}") for k in (0, 1)}


def test_two_apps_with_the_same_event_id_are_both_staged_and_decided(store_engine, redis_client):
    policy = Policy(window_s=600, lookahead_s=300, lookback_s=1200)
    edge = CurationEdge(store_engine, redis_client, policy, topic="t", group="g", partitions=1)
    same = "00000000-0000-4000-8000-00000000beef"

    def raw(app: str, prompt: str) -> bytes:
        return json.dumps(
            {
                "schema_version": 1,
                "event_id": same,
                "kind": "rating",
                "occurred_at": "2026-11-01T00:01:00+00:00",
                "app_id": app,
                "user_id": f"{app}-user",
                "prompt": prompt,
                "response": "An answer.",
                "rating": "up",
            }
        ).encode()

    batch = [
        Record(raw("app-a", "How do I pair my watch?"), 0, 1),
        Record(raw("app-b", "How do I cancel my plan?"), 0, 2),
        Record(json.dumps({"event_id": same, "app_id": "app-c", "kind": "rating"}).encode(), 0, 3),
    ]
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
