"""The gateway fuzzed with generated bad bodies: never a 5xx, always a 4xx naming a field path, nothing sent."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.errors import EventError
from ingest.events import parse_event
from support.events import json_values, texts, wire_events
from support.kafka_topics import read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

EXAMPLES = 2_000
FIELDS = [
    "schema_version",
    "kind",
    "event_id",
    "occurred_at",
    "app_id",
    "user_id",
    "session_id",
    "prompt",
    "response_id",
    "adapter_version",
    "client",
    "metadata",
    "response",
    "rating",
    "edited",
    "responses",
    "chosen",
]
BAD_TEXT = st.sampled_from(["\x00", "\x07", "\x1b[31m", "\ud800", "\x85"]).flatmap(lambda c: texts.map(lambda t: t + c))
BAD_VALUES = st.one_of(
    json_values,
    BAD_TEXT,
    st.just("x" * 33_000),
    st.sampled_from(
        [
            "1999-12-31T23:59:59Z",
            "2999-01-01T00:00:00Z",
            "2026-01-01",
            "yesterday",
            True,
            1.0,
            2,
            -1,
            "UP",
            "",
            "Shop Bot",
            [],
            {},
            [{"role": "bot"}],
        ]
    ),
)
_BASE = {
    "schema_version": 1,
    "event_id": "6f1c1c1e-51a8-4c56-9a6e-3b0f2a7d9e10",
    "app_id": "shop-bot",
    "occurred_at": "2026-05-01T10:00:00+02:00",
    "user_id": "user-1",
}
# a small pool of valid events of every kind and shape keeps generation cheap; the mutations vary
POOL = [
    {**_BASE, "kind": "rating", "prompt": "2+2?", "response": "4", "rating": "up"},
    {
        **_BASE,
        "kind": "rating",
        "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "response": "hey",
        "rating": "down",
        "session_id": "s-1",
        "response_id": "r-1",
        "adapter_version": None,
        "client": {"device_id": "d"},
    },
    {
        **_BASE,
        "kind": "edit",
        "prompt": "fix this",
        "response": "teh",
        "edited": "the",
        "metadata": {"page": "/x", "n": [1, 2, {"deep": True}]},
    },
    {**_BASE, "kind": "comparison", "prompt": "pick", "responses": ["a", "b"], "chosen": 1, "adapter_version": "v3"},
    {**_BASE, "kind": "comparison", "prompt": "pick", "responses": ["a", "b"], "chosen": None},
]
good = st.one_of(
    st.sampled_from(POOL),
    st.sampled_from(POOL),
    st.sampled_from(POOL),
    wire_events().map(lambda d: {**d, "app_id": "shop-bot"}),
)


def serialise(data) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw) -> bytes:
    data = dict(draw(good))
    how = draw(st.sampled_from(["drop", "extra", "replace", "other_kind", "duplicate", "nested"]))
    if how == "drop":
        required = [
            k for k in ("schema_version", "kind", "event_id", "occurred_at", "app_id", "user_id", "prompt") if k in data
        ]
        del data[draw(st.sampled_from(required))]
    elif how == "extra":
        data[draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in FIELDS))] = draw(json_values)
    elif how == "replace":
        data[draw(st.sampled_from(FIELDS))] = draw(BAD_VALUES)
    elif how == "other_kind":
        data.update(
            draw(
                st.sampled_from(
                    [{"edited": "x"}, {"rating": "up"}, {"responses": ["a", "b"]}, {"chosen": 1}, {"response": "r"}]
                )
            )
        )
    elif how == "nested":
        data["prompt"] = [{"role": draw(st.sampled_from(["user", "bot", 1, None])), "content": draw(BAD_VALUES)}]
    else:
        raw = serialise(data)
        key = draw(st.sampled_from(sorted(data)))
        return raw[:-1] + b"," + json.dumps(key).encode() + b":" + serialise(data[key]) + b"}"
    return serialise(data)


def is_bad(raw: bytes) -> bool:
    try:
        parse_event(raw)
    except EventError:
        return True
    return False


bad_events = mutated().filter(is_bad)
bad_bodies = st.one_of(
    bad_events,
    st.lists(st.one_of(bad_events, st.sampled_from(POOL).map(serialise)), min_size=1, max_size=4)
    .filter(lambda items: any(is_bad(i) for i in items))
    .map(lambda items: b"[" + b",".join(items) + b"]"),
    st.binary(max_size=64),
    json_values.map(serialise),
    st.just(b"[" * 100_000 + b"]" * 100_000),
    st.just(b'{"schema_version": 1' + b" " * 70_000 + b"}"),
)


def test_the_pool_is_valid():
    for event in POOL:
        parse_event(event)


def test_bad_bodies_get_a_4xx_naming_a_field_path_and_reach_nothing(gateway, kafka_bootstrap):
    client = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=30)
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )
    @given(body=bad_bodies)
    def check(body: bytes) -> None:
        r = client.post("/v1/events", content=body)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:300], body[:300])
        answer = r.json()
        assert answer["errors"], answer
        assert all(isinstance(e["loc"], str) and e["loc"] and e["msg"] for e in answer["errors"]), answer

    check()
    client.close()
    assert sum(seen.values()) >= EXAMPLES, seen
    print(f"answers by status: {dict(sorted(seen.items()))}")
    assert read_topic(kafka_bootstrap, gateway.topic) == [], "a refused body reached the topic"
