"""The HTTP gateway against the real broker: answers, keys, ip_hash, metrics, and 10,000 events exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from alignloop.core.kafka_auth import kafka_auth
from ingest.client import HttpFeedbackClient
from ingest.errors import EventError
from support.gateway import LiveGateway, gateway_config
from support.kafka_topics import event_ids, read_topic
from support.ports import free_port

pytestmark = pytest.mark.kafka


def an_event(**patch):
    return {
        "schema_version": 1,
        "kind": "rating",
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2026-01-01T00:00:00Z",
        "app_id": "shop-bot",
        "user_id": "u-1",
        "prompt": "2+2?",
        "response": "4",
        "rating": "up",
        **patch,
    }


def post(gw, body, key=None):
    content = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    headers = {"Authorization": f"Bearer {key or gw.key}"} if key != "" else {}
    return httpx.post(f"{gw.url}/v1/events", content=content, headers=headers, timeout=30)


def test_ten_thousand_events_through_the_gateway_arrive_exactly_once(gateway, kafka_bootstrap):
    sent = []
    with HttpFeedbackClient("shop-bot", gateway.url, gateway.key, batch_size=100) as client:
        for i in range(9_900):
            sent.append(client.rate(user_id=f"u{i % 50}", prompt=f"q{i}", response="a", rating="up").event_id)
    for _ in range(100):  # and single-event requests
        e = an_event()
        assert post(gateway, e).status_code == 200
        sent.append(e["event_id"])
    on_topic = Counter(event_ids(read_topic(kafka_bootstrap, gateway.topic)))
    assert len(on_topic) == 10_000 and set(on_topic) == set(sent)
    assert max(on_topic.values()) == 1


def test_a_single_event_is_acknowledged_with_its_id_and_no_source_of_the_connection(gateway, kafka_bootstrap):
    e = an_event(client={"device_id": "phone-7"})
    r = post(gateway, e)
    assert r.status_code == 200, r.text
    assert r.json()["results"] == [{"index": 0, "status": "accepted", "event_id": e["event_id"]}]
    stored = json.loads(read_topic(kafka_bootstrap, gateway.topic)[0])
    assert stored["client"] == {"device_id": "phone-7"}  # the gateway's peer (this test process) is no end user
    assert b"127.0.0.1" not in read_topic(kafka_bootstrap, gateway.topic)[0]


def test_the_feedback_token_passes_through_the_gateway_and_the_sdk(gateway, kafka_bootstrap):
    token = "alf1.eyJiIjoiYiJ9.c2lnbmF0dXJl"  # the gateway checks the shape only; curation verifies it
    assert post(gateway, an_event(feedback_token=token, response_id="chatcmpl-1")).status_code == 200
    with HttpFeedbackClient("shop-bot", gateway.url, gateway.key) as client:
        client.rate(
            user_id="u-2", prompt="p", response="r", rating="up", response_id="chatcmpl-2", feedback_token=token + "2"
        )
        client.edit(
            user_id="u-3",
            prompt="p",
            response="r",
            edited="e",
            response_id="chatcmpl-3",
            **{"feedback_token": token + "3"},
        )
        client.compare(user_id="u-4", prompt="p", responses=["a", "b"], chosen=0)
    stored = {
        e.get("response_id", None): e.get("feedback_token")
        for e in map(json.loads, read_topic(kafka_bootstrap, gateway.topic))
    }
    assert stored == {"chatcmpl-1": token, "chatcmpl-2": token + "2", "chatcmpl-3": token + "3", None: None}
    r = post(gateway, an_event(feedback_token=""))
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "feedback_token", r.text


def test_without_a_valid_key_401(gateway):
    assert post(gateway, an_event(), key="").status_code == 401
    r = post(gateway, an_event(), key="alk_000000000000_" + "x" * 43)
    assert r.status_code == 401 and r.json()["errors"][0]["loc"] == "header.authorization"
    assert r.headers["www-authenticate"] == "Bearer"


def test_a_revoked_key_is_refused_within_the_cache_time(gateway):
    import time

    from alignloop.core.db import session_scope
    from ingest.store import revoke_key

    assert post(gateway, an_event()).status_code == 200
    with session_scope(gateway.engine) as session:
        revoke_key(session, gateway.key_id)
    time.sleep(0.6)  # the fixture's key cache is 0.5 s
    assert post(gateway, an_event()).status_code == 401


def test_another_apps_event_is_403_and_nothing_is_sent(gateway, kafka_bootstrap):
    r = post(gateway, [an_event(), an_event(app_id="other-app")])
    assert r.status_code == 403 and r.json()["errors"][0]["loc"] == "1.app_id"
    assert post(gateway, an_event(), key=gateway.other_key).status_code == 403
    assert read_topic(kafka_bootstrap, gateway.topic) == []


def test_a_batch_with_a_bad_event_is_422_per_index_and_nothing_is_sent(gateway, kafka_bootstrap):
    good = an_event()
    r = post(gateway, [good, an_event(rating="meh"), an_event(edited="x")])
    assert r.status_code == 422
    body = r.json()
    assert [x["status"] for x in body["results"]] == ["valid", "refused", "refused"]
    assert body["results"][1]["errors"] == [{"loc": "rating", "msg": "Input should be 'up' or 'down'; got 'meh'"}]
    assert {e["loc"] for e in body["errors"]} == {"1.rating", "2.edited"}
    assert read_topic(kafka_bootstrap, gateway.topic) == []


@pytest.mark.parametrize(
    "body,status,loc",
    [
        (b"x" * (64 * 1024 + 1), 413, "body"),
        (None, 413, "response"),  # a text field past 32 KiB
        ([None] * 1001, 413, "body"),
        (b"{not json", 422, "body"),
        (b"[]", 422, "body"),
        (b"\xff", 422, "body"),
        (b'{"kind": "rating", "kind": "edit"}', 422, "body.kind"),
    ],
)
def test_size_limits_413_and_unreadable_bodies_422(gateway, body, status, loc):
    if body is None:
        body = an_event(response="é" * 20_000)
    r = post(gateway, body)
    assert r.status_code == status, r.text
    assert r.json()["errors"][0]["loc"] == loc


def test_kafka_unreachable_is_503_with_retry_after_and_the_http_client_raises(key_engine):
    from ingest.errors import DeliveryError
    from support.gateway import make_key

    cfg = gateway_config(
        f"127.0.0.1:{free_port()}",
        "never-created",
        key_engine,
        produce_timeout_s=1.0,
        ensure_topics=False,
        retry_after_s=1,
    )
    _, key = make_key(key_engine, "shop-bot")
    with LiveGateway(cfg) as gw:
        gw.key = key
        r = post(gw, [an_event(), an_event()])
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert [x["status"] for x in r.json()["results"]] == ["not_acknowledged"] * 2
        assert httpx.get(f"{gw.url}/healthz").status_code == 503

        heard = []
        client = HttpFeedbackClient(
            "shop-bot", gw.url, key, retries=1, on_error=lambda event, exc: heard.append(str(event.event_id))
        )
        sent = [client.rate(user_id="u", prompt="p", response="r", rating="up").event_id for _ in range(3)]
        with pytest.raises(DeliveryError) as info:
            client.close()
        assert sorted(str(e.event_id) for e, _ in info.value.failures) == sorted(sent) == sorted(heard)


def test_http_client_sends_batches_and_refuses_bad_events_before_sending(gateway, kafka_bootstrap):
    client = HttpFeedbackClient("shop-bot", gateway.url, gateway.key, batch_size=10)
    deliveries = [client.rate(user_id="u", prompt=f"p{i}", response="r", rating="up") for i in range(25)]
    assert sum(d.done() for d in deliveries) == 20  # two full batches went at once; 5 wait for flush
    with pytest.raises(EventError):
        client.rate(user_id="", prompt="p", response="r", rating="up")
    client.close()
    for d in deliveries:
        d.result(timeout=0)
    assert len(read_topic(kafka_bootstrap, gateway.topic)) == 25


def test_healthz_metrics_and_openapi(gateway):
    assert post(gateway, an_event()).status_code == 200
    assert post(gateway, an_event(rating="meh")).status_code == 422
    assert httpx.get(f"{gateway.url}/healthz").json()["kafka"] == "ok"
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'alignloop_ingest_events_accepted_total{app_id="shop-bot"} 1.0' in metrics
    assert 'alignloop_ingest_events_refused_total{reason="schema"} 1.0' in metrics
    assert "alignloop_ingest_produce_latency_seconds_bucket" in metrics
    spec = httpx.get(f"{gateway.url}/openapi.json").json()
    assert "FeedbackEventV1" in spec["components"]["schemas"]
    assert "#/$defs/" not in json.dumps(spec)


def test_a_conversation_lands_in_one_partition_through_the_sdk_and_the_gateway(gateway, kafka_bootstrap):
    from kafka import KafkaConsumer

    from ingest.client import FeedbackClient

    sessions = [f"s-{i}" for i in range(12)]
    with FeedbackClient("shop-bot", kafka_bootstrap, topic=gateway.topic) as sdk:
        for s in sessions:
            sdk.rate(user_id="u", prompt="p", response="r", rating="up", session_id=s)
    big = [an_event(session_id=sessions[i % 12], response="r" * 3000) for i in range(200)]  # > one 256 KiB batch
    r = post(gateway, big)
    assert r.status_code == 200 and r.json()["accepted"] == 200
    consumer = KafkaConsumer(
        gateway.topic,
        bootstrap_servers=kafka_bootstrap,
        **kafka_auth(),
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        group_id=None,
    )
    try:
        where: dict[str, set[int]] = {}
        for m in consumer:
            where.setdefault(json.loads(m.value)["session_id"], set()).add(m.partition)
    finally:
        consumer.close()
    assert sorted(where) == sorted(sessions)
    assert all(len(parts) == 1 for parts in where.values()), where
    assert len(set().union(*where.values())) > 1  # and the conversations spread over the partitions


# ---------------------------------------------------------------- end-user sources (issue 12, item 1)
def _recent(i: int) -> str:
    """Event times spread over the last half hour (the contract and the replay's clock accept them)."""
    t = datetime.now(UTC) - timedelta(minutes=30) + timedelta(seconds=4 * i)
    return t.isoformat().replace("+00:00", "Z")


def _users_events(users: range) -> list[dict]:
    return [
        an_event(
            user_id=f"user-{u}",
            prompt=f"question {u} {k}",
            response=f"answer {u} {k}",
            occurred_at=_recent(2 * u + k),
            rating="up" if (u + k) % 2 else "down",
        )
        for u in users
        for k in range(2)
    ]


def _replay(tmp_path, values: list[bytes]) -> dict[str, list[str]]:
    """The topic's events through `alignloop curation replay` (the real entry point): event_id -> reasons."""
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"".join(v + b"\n" for v in values))
    out = tmp_path / "decisions.jsonl"
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "from alignloop.cli import main; main()",
            "curation",
            "replay",
            "--input",
            str(src),
            "--decisions",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return {d["event_id"]: d["reasons"] for d in map(json.loads, out.read_text().splitlines())}


def test_two_hundred_users_behind_one_app_backend_are_all_kept(gateway, kafka_bootstrap, tmp_path):
    """An app posts from its backend without end-user addresses: one peer, but no shared end-user source."""
    events = _users_events(range(200))
    for i in range(0, 200, 50):  # batches, and single-event requests, all from this one process
        assert post(gateway, events[i : i + 50]).status_code == 200
    for e in events[200:]:
        assert post(gateway, e).status_code == 200
    values = read_topic(kafka_bootstrap, gateway.topic)
    assert len(values) == 400
    decisions = _replay(tmp_path, values)
    assert len(decisions) == 400
    assert Counter(r for reasons in decisions.values() for r in reasons) == Counter(), "all 400 must be kept"
    assert all("ip_hash" not in (json.loads(v).get("client") or {}) for v in values)  # the peer is no source


def test_end_user_addresses_are_hashed_with_the_key_and_never_stored(gateway, kafka_bootstrap, tmp_path):
    """client.ip in a batch, X-Alignloop-End-User-IP on single events: one keyed hash per end user."""
    events = _users_events(range(200))
    address = {
        f"user-{u}": (f"203.0.{u // 100}.{u % 100 + 1}" if u % 5 else f"2001:db8:{u:x}::{u % 7 + 1}")
        for u in range(200)
    }
    batch = [{**e, "client": {"ip": address[e["user_id"]], "device_id": f"dev-{e['user_id']}"}} for e in events[:200]]
    for i in range(0, 200, 100):
        r = post(gateway, batch[i : i + 100])
        assert r.status_code == 200, r.text[:500]
    for e in events[200:]:
        r = httpx.post(
            f"{gateway.url}/v1/events",
            json=e,
            timeout=30,
            headers={"Authorization": f"Bearer {gateway.key}", "X-Alignloop-End-User-IP": address[e["user_id"]]},
        )
        assert r.status_code == 200, r.text[:500]
    values = read_topic(kafka_bootstrap, gateway.topic)
    assert len(values) == 400
    raw = b"\n".join(values)
    assert not any(a.encode() in raw for a in address.values()) and b"127.0.0.1" not in raw
    hashes: dict[str, set[str]] = {}
    for v in values:
        e = json.loads(v)
        assert set(e["client"]) <= {"ip_hash", "device_id"} and len(e["client"]["ip_hash"]) == 32
        hashes.setdefault(e["user_id"], set()).add(e["client"]["ip_hash"])
    assert all(len(h) == 1 for h in hashes.values())  # one user, one source, by either way of sending it
    assert len({h for hs in hashes.values() for h in hs}) == 200
    decisions = _replay(tmp_path, values)
    assert len(decisions) == 400 and all(not r for r in decisions.values())


@pytest.mark.parametrize(
    "patch, headers, loc",
    [
        ({"client": {"ip": "not-an-address"}}, {}, "client.ip"),
        ({"client": {"ip_hash": "chosen-by-the-app"}}, {}, "client.ip_hash"),
        ({}, {"X-Alignloop-End-User-IP": "300.1.1.1"}, "header.x-alignloop-end-user-ip"),
        (
            {"client": {"ip": "198.51.100.7"}},
            {"X-Alignloop-End-User-IP": "198.51.100.7"},
            "header.x-alignloop-end-user-ip",
        ),
    ],
)
def test_a_bad_or_ambiguous_end_user_source_is_422_and_not_echoed(gateway, kafka_bootstrap, patch, headers, loc):
    r = httpx.post(
        f"{gateway.url}/v1/events",
        json=an_event(**patch),
        timeout=30,
        headers={"Authorization": f"Bearer {gateway.key}", **headers},
    )
    assert r.status_code == 422, r.text[:500]
    assert [e["loc"] for e in r.json()["errors"]] == [loc]


def test_the_end_user_header_is_for_single_events_only(gateway):
    r = httpx.post(
        f"{gateway.url}/v1/events",
        json=[an_event(), an_event()],
        timeout=30,
        headers={"Authorization": f"Bearer {gateway.key}", "X-Alignloop-End-User-IP": "198.51.100.7"},
    )
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "header.x-alignloop-end-user-ip"


def test_the_http_client_passes_the_end_user_address_for_the_gateway_to_hash(gateway, kafka_bootstrap):
    from ingest.client import FeedbackClient
    from ingest.sources import source_hash

    with HttpFeedbackClient("shop-bot", gateway.url, gateway.key, batch_size=10) as client:
        sent = [
            client.rate(
                user_id=f"u{i}",
                prompt=f"q{i}",
                response="a",
                rating="up",
                end_user_ip=f"198.51.100.{i + 1}",
                client={"device_id": f"d{i}"},
            )
            for i in range(12)
        ]
        with pytest.raises(EventError) as bad:
            client.rate(user_id="u", prompt="q", response="a", rating="up", end_user_ip="nope")
        assert bad.value.errors[0]["loc"] == "end_user_ip"
    assert all(d.succeeded() for d in sent)
    stored = {e["user_id"]: e["client"] for e in map(json.loads, read_topic(kafka_bootstrap, gateway.topic))}
    assert stored == {
        f"u{i}": {"ip_hash": source_hash(b"test-source-key", f"198.51.100.{i + 1}"), "device_id": f"d{i}"}
        for i in range(12)
    }
    # the Kafka SDK: the app hashes the address itself
    with (
        FeedbackClient("shop-bot", kafka_bootstrap, topic=gateway.topic) as sdk,
        pytest.raises(EventError, match="sends no raw address"),
    ):
        sdk.rate(user_id="u", prompt="q", response="a", rating="up", end_user_ip="198.51.100.1")
