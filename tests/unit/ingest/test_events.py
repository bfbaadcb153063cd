"""The v1 event contract: what it accepts, what it refuses and how it says so, and the wire round trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ingest.errors import EventError
from ingest.events import (
    ComparisonEvent,
    EditEvent,
    Message,
    RatingEvent,
    encode_event,
    event_json_schema,
    event_key,
    parse_event,
)
from support.events import NOW, events, wire_events

OK = {
    "schema_version": 1,
    "kind": "rating",
    "event_id": "123e4567-e89b-12d3-a456-426614174000",
    "occurred_at": "2026-05-31T12:00:00+02:00",
    "app_id": "shop-bot",
    "user_id": "u-1",
    "prompt": "what is 2+2?",
    "response": "4",
    "rating": "up",
}


def refused(data, **kw) -> EventError:
    with pytest.raises(EventError) as info:
        parse_event(data, now=NOW, **kw)
    return info.value


def locs(err: EventError) -> list[str]:
    return [e["loc"] for e in err.errors]


def test_a_valid_rating_is_parsed_and_normalised():
    e = parse_event(json.dumps(OK).encode(), now=NOW)
    assert isinstance(e, RatingEvent)
    assert e.prompt == (Message(role="user", content="what is 2+2?"),)
    assert e.occurred_at == datetime(2026, 5, 31, 10, tzinfo=UTC)
    assert encode_event(e).startswith(b'{"schema_version":1,"kind":"rating","event_id":"123e4567')


def test_each_kind_selects_its_model():
    edit = {**OK, "kind": "edit", "edited": "four"}
    del edit["rating"]
    cmp = {**OK, "kind": "comparison", "responses": ["4", "5"], "chosen": None}
    del cmp["rating"], cmp["response"]
    assert isinstance(parse_event(edit, now=NOW), EditEvent)
    assert parse_event(cmp, now=NOW) == ComparisonEvent.model_validate(cmp, context={"now": NOW})


@pytest.mark.parametrize(
    "patch,loc,words",
    [
        ({"edited": "x"}, "edited", "field of kind 'edit'"),
        ({"colour": "red"}, "colour", "unknown field"),
        ({"rating": "meh"}, "rating", "'meh'"),
        ({"kind": "poll"}, "kind", "'poll'"),
        ({"schema_version": 2}, "schema_version", "2"),
        ({"schema_version": True}, "schema_version", "JSON integer"),
        ({"event_id": "not-a-uuid"}, "event_id", "UUID"),
        ({"occurred_at": "1999-12-31T23:59:59Z"}, "occurred_at", "2000-01-01"),
        ({"occurred_at": "2026-06-02T00:00:01Z"}, "occurred_at", "one day ahead"),
        ({"occurred_at": "2026-05-31T12:00:00"}, "occurred_at", "zone"),
        ({"occurred_at": 1700000000}, "occurred_at", "RFC 3339"),
        ({"app_id": "Shop"}, "app_id", "'Shop'"),
        ({"user_id": ""}, "user_id", "''"),
        ({"user_id": "u" * 129}, "user_id", "128"),
        ({"prompt": []}, "prompt", "at least one"),
        ({"prompt": [{"role": "bot", "content": "x"}]}, "prompt.0.role", "'bot'"),
        ({"prompt": [{"role": "user", "content": "a\x00b"}]}, "prompt.0.content", "control"),
        ({"response": "bell\x07"}, "response", "control"),
        ({"response": "\ud800"}, "response", "control"),
        ({"metadata": {"a": [[[[[[[[[1]]]]]]]]]}}, "metadata", "8"),
        ({"client": {"ip": "1.2.3.4"}}, "client.ip", "unknown field"),
    ],
)
def test_refusals_name_the_field_and_the_rule(patch, loc, words):
    err = refused({**OK, **patch})
    assert err.reason == "schema"
    assert loc in locs(err)
    assert any(words in e["msg"] for e in err.errors if e["loc"] == loc), err.errors


def test_comparison_needs_exactly_two_responses_and_an_exact_choice():
    cmp = {**OK, "kind": "comparison", "responses": ["a"], "chosen": True}
    del cmp["rating"]
    err = refused(cmp)
    assert {"responses.1", "chosen"} <= set(locs(err))
    assert "response" in locs(err)  # a rating's payload field on a comparison


def test_tabs_newlines_and_carriage_returns_are_text():
    assert parse_event({**OK, "response": "a\tb\r\nc"}, now=NOW).response == "a\tb\r\nc"


@pytest.mark.parametrize(
    "patch,loc",
    [
        ({"response": "é" * 16385}, "response"),  # 32770 bytes as UTF-8, fewer characters
        ({"metadata": {"k": "v" * 4100}}, "metadata"),
    ],
)
def test_size_limits_are_too_large(patch, loc):
    err = refused({**OK, **patch})
    assert err.reason == "too_large" and loc in locs(err)


def test_whole_event_limit_counts_bytes():
    big = {**OK, "prompt": [{"role": "user", "content": "x" * 30000}] * 3}
    assert refused(json.dumps(big).encode()).reason == "too_large"
    assert refused(big).reason == "too_large"


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b'{"kind": "rating", "kind": "edit"}', "duplicate_key"),
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"a": NaN}', "not_json"),
        (b"{", "not_json"),
        (b"[]", "not_object"),
        (b"42", "not_object"),
    ],
)
def test_bytes_that_are_not_an_event_object(raw, reason):
    assert refused(raw).reason == reason


def test_occurred_at_window_uses_the_receiving_clock():
    later = {**OK, "occurred_at": "2026-06-01T23:00:00Z"}
    assert parse_event(later, now=NOW).occurred_at.hour == 23
    refused(later, now=None) if datetime.now(UTC) < NOW else None
    with pytest.raises(EventError):
        parse_event(later, now=datetime(2026, 5, 31, tzinfo=UTC))


def test_events_are_frozen_and_hashable():
    e = parse_event(OK, now=NOW)
    with pytest.raises(ValidationError, match="frozen"):
        e.rating = "down"  # type: ignore[misc]
    assert len({e, parse_event(OK, now=NOW)}) == 1


def test_error_message_is_one_line_with_field_rule_and_value():
    err = refused({**OK, "rating": "meh"})
    assert "\n" not in str(err) and "rating" in str(err) and "'meh'" in str(err)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_decode_of_encode_is_identity(event):
    wire = encode_event(event)
    again = parse_event(wire, now=NOW)
    assert again == event
    assert encode_event(again) == wire


@settings(max_examples=100)
@given(wire_events(), st.text(min_size=1, max_size=10).filter(lambda k: k not in OK))
def test_any_unknown_field_is_refused(data, extra):
    if extra in data:
        return
    err = refused({**data, extra: 1})
    assert extra in locs(err) or any(e["loc"] == extra for e in err.errors)


@given(wire_events())
def test_key_depends_on_app_and_conversation_only(data):
    e = parse_event(data, now=NOW)
    same = parse_event({**data, "event_id": "00000000-0000-4000-8000-000000000000", "user_id": "someone-else"}, now=NOW)
    assert event_key(e) == event_key(same)
    other_app = parse_event({**data, "app_id": data["app_id"] + "-x"}, now=NOW)
    assert event_key(other_app) != event_key(e)


def test_session_id_keys_the_conversation_over_prompts():
    a = parse_event({**OK, "session_id": "s1", "prompt": "one"}, now=NOW)
    b = parse_event({**OK, "session_id": "s1", "prompt": "two"}, now=NOW)
    c = parse_event({**OK, "prompt": "one"}, now=NOW)
    d = parse_event({**OK, "prompt": [{"role": "user", "content": "one"}]}, now=NOW)
    assert event_key(a) == event_key(b) and event_key(c) == event_key(d) != event_key(a)


def test_committed_schema_matches_the_model():
    from importlib.resources import files

    committed = json.loads(files("ingest").joinpath("schema/feedback-event-v1.json").read_text())
    assert committed == event_json_schema(), (
        "regenerate: alignloop ingest schema > ingest/schema/feedback-event-v1.json"
    )


@pytest.fixture(scope="module")
def schema_validator():
    import jsonschema

    return jsonschema.Draft202012Validator(event_json_schema(), format_checker=jsonschema.FormatChecker())


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=wire_events())
def test_json_schema_accepts_what_the_model_accepts(schema_validator, data):
    schema_validator.validate(data)


def test_json_schema_refuses_an_unknown_field_too():
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**OK, "colour": "red"}, event_json_schema())
