"""Faults on the stream path with real services: far-future event times, and the store or Redis going away.

The outage tests run their own PostgreSQL cluster and their own redis-server (own ports and data dirs, as
`alignloop stack` starts them) so that stopping one touches nothing another test or engineer uses.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from alignloop.core.kafka_auth import kafka_auth
from curation.replay import run_replay
from curation.settings import Policy
from support.feed import key_of, publish_lines
from support.ports import free_port
from support.stream.generate import generate
from support.stream.harness import Workers, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


def _rating(i: int, t: datetime, *, app: str = "app-a", tag: str = "q") -> str:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": str(uuid.uuid4()),
            "kind": "rating",
            "occurred_at": t.isoformat(),
            "app_id": app,
            "user_id": f"{tag}-user-{i}",
            "prompt": f"How do I set up feature {tag}{i} on my device?",
            "response": f"Open Settings and enable feature {tag}{i}.",
            "rating": "up",
        }
    )


def _publish_paced(bootstrap: str, topic: str, lines, seconds: float, make=None) -> list[str]:
    """Send `lines` evenly over `seconds` (or build each with `make(i, now)` when it is sent); returns what was sent."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5, **kafka_auth()
    )
    sent: list[str] = []
    chunks = max(1, int(seconds / 0.25))
    step = max(1, -(-len(lines) // chunks))
    t0 = time.monotonic()
    try:
        for k, lo in enumerate(range(0, len(lines), step)):
            for i in range(lo, min(lo + step, len(lines))):
                line = make(i, datetime.now(UTC)) if make else lines[i]
                raw = line.encode()
                producer.send(topic, key=key_of(raw), value=raw)
                sent.append(line)
            producer.flush(30)
            time.sleep(max(0.0, t0 + (k + 1) * 0.25 - time.monotonic()))
    finally:
        producer.close()
    return sent


def _same_as_replay(out: dict, replay) -> None:
    assert out["decisions"] == replay.decisions
    assert out["pairs"] == replay.pairs
    assert out["unpaired"] == replay.unpaired
    assert sorted(d["sha256"] for d in out["dlq"]) == sorted(d["sha256"] for d in replay.dlq)


# ---------------------------------------------------------------- future-dated events (issue 12, item 2)
def test_events_dated_a_day_ahead_do_not_make_later_events_late(
    tmp_path, curation_topic, kafka_group, redis_url, kafka_bootstrap
):
    """40 ratings dated 23 h ahead (every partition), then 1,000 ordinary ones: none is decided late_event."""
    ahead = datetime.now(UTC) + timedelta(hours=23)
    future = [_rating(i, ahead, tag="future") for i in range(40)]
    workers = Workers(
        tmp_path,
        topic=curation_topic,
        group=kafka_group,
        redis_url=redis_url,
        bootstrap=kafka_bootstrap,
        policy__window_s="120",
        policy__lookahead_s="30",
        policy__lookback_s="240",
    )
    try:
        workers.start()
        publish_lines(kafka_bootstrap, curation_topic, future)
        workers.wait_for(lambda c: c["staged"] + c["decisions"] >= 40, 120, "the future-dated events consumed")
        time.sleep(2)  # the settle timer runs on what it saw
        normal = _publish_paced(
            kafka_bootstrap, curation_topic, [None] * 1000, 10, make=lambda i, now: _rating(i, now, tag="now")
        )
        workers.wait_for(lambda c: c["decisions"] >= 1040, 180, "1040 decisions")
        out = workers.outputs()
    finally:
        workers.stop_all()
    reasons = {d["event_id"]: d["reasons"] for d in out["decisions"]}
    late = [e for e, r in reasons.items() if "late_event" in r]
    assert not late, f"{len(late)} of {len(reasons)} decided late_event"
    future_ids = {json.loads(line)["event_id"] for line in future}
    assert {e for e, r in reasons.items() if r == ["future_event"]} == future_ids
    assert sum(1 for e, r in reasons.items() if e not in future_ids and not r) == 1000
    # the replay judges each line against its receiving clock (`--now`): the same decisions as the stream
    policy = Policy(window_s=120, lookahead_s=30, lookback_s=240)
    _same_as_replay(out, run_replay(future + normal, policy, now=datetime.now(UTC)))
    on_rejected = [
        m for m in map(json.loads, read_topic(kafka_bootstrap, f"{curation_topic}.rejected")) if "stage" not in m
    ]  # refused at decode, not dropped by a guard
    assert {m["event_id"] for m in on_rejected} == future_ids
    assert all(m["reasons"] == ["future_event"] for m in on_rejected)


# ---------------------------------------------------------------- outages (issue 12, item 3)
def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _stream_through_an_outage(
    tmp_path,
    *,
    topic: str,
    group: str,
    bootstrap: str,
    redis_url: str,
    store_url: str | None,
    stop,
    start,
    dependency: str,
) -> None:
    """3,000 generated lines (valid, refused, unreadable) over 25 s; the service is down for 10 s from +6 s.

    Afterwards the store holds the replay's decisions exactly (none lost, none twice), every refused event
    reached `.rejected` and every unreadable line `.dlq`, and the worker said it was unhealthy meanwhile.
    """
    lines, _, _ = generate(seed=13, scale=0.4, hours=0.5)
    lines = lines[:3000]
    port = free_port()
    workers = Workers(
        tmp_path,
        topic=topic,
        group=group,
        redis_url=redis_url,
        bootstrap=bootstrap,
        store_url=store_url,
        metrics_port=str(port),
        batch_size="50",
    )
    health: list[float | None] = []
    try:
        workers.start()
        workers.wait_for(lambda c: "decisions" in c, 90, "the worker to migrate the store")
        publisher = threading.Thread(target=_publish_paced, args=(bootstrap, topic, lines, 25))
        publisher.start()
        workers.wait_for(lambda c: c["staged"] > 100, 60, "the first batches staged")
        time.sleep(4)
        stop()
        down_until = time.monotonic() + 10
        while time.monotonic() < down_until:
            health.append(_metric(port, "curation_worker_healthy"))
            time.sleep(0.5)
        start()
        publisher.join(120)
        replay = run_replay(lines, Policy())
        want = len(replay.decisions)
        counts = workers.wait_for(lambda c: c["decisions"] >= want, 150, f"{want} decisions")
        out = workers.outputs()
        healthy_after = _metric(port, "curation_worker_healthy")
        retried = _metric(port, f'curation_dependency_retries_total{{dependency="{dependency}"}}')
    finally:
        workers.stop_all()
    assert counts["decisions"] == want
    _same_as_replay(out, replay)
    refused = {d["event_id"] for d in replay.decisions if d["reasons"] and d["reasons"][0].startswith("contract_")}
    assert (
        refused
        and {m["event_id"] for m in map(json.loads, read_topic(bootstrap, f"{topic}.rejected")) if "stage" not in m}
        == refused
    )  # the refused ones (guard drops carry `stage`)
    assert {json.loads(m)["sha256"] for m in read_topic(bootstrap, f"{topic}.dlq")} == {d["sha256"] for d in replay.dlq}
    assert retried, f"no write to {dependency} failed: the outage missed the batches in flight"
    assert 0.0 in health, f"the worker never reported unhealthy during the outage: {health}"
    assert healthy_after == 1.0


@pytest.fixture
def private_postgres(tmp_path):
    """A PostgreSQL cluster of this test alone (own port and data dir): the test may stop it."""
    import shutil

    from alignloop.core.stack import PostgresServer

    port = free_port()
    server = PostgresServer(
        url=f"postgresql+psycopg://alignloop:{uuid.uuid4().hex}@127.0.0.1:{port}/alignloop",
        state_dir=tmp_path / "pg-state",
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.data, ignore_errors=True)


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test alone (own port and dir): the test may stop it."""
    from alignloop.core.stack import RedisServer

    server = RedisServer(
        url=f"redis://:{uuid.uuid4().hex}@127.0.0.1:{free_port()}/0", state_dir=tmp_path / "redis-state"
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.mark.postgres
def test_postgres_down_for_10_s_loses_no_event(
    tmp_path, curation_topic, kafka_group, redis_url, kafka_bootstrap, private_postgres
):
    _stream_through_an_outage(
        tmp_path,
        topic=curation_topic,
        group=kafka_group,
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        store_url=private_postgres.url,
        stop=private_postgres.stop,
        start=private_postgres.start,
        dependency="store",
    )


def test_redis_down_for_10_s_loses_no_event(tmp_path, curation_topic, kafka_group, kafka_bootstrap, private_redis):
    redis_url = f"redis://:{private_redis.password}@{private_redis.host}:{private_redis.port}/0"
    _stream_through_an_outage(
        tmp_path,
        topic=curation_topic,
        group=kafka_group,
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        store_url=None,
        stop=private_redis.stop,
        start=private_redis.start,
        dependency="redis",
    )
