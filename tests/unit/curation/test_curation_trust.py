"""Event time is trusted only within a skew of the broker's time; event ids are unique per app, not across apps."""

import json
from datetime import UTC, datetime, timedelta

from curation.decode import Accepted, Rejected, decode_raw
from curation.replay import run_replay
from curation.settings import Policy

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _event(
    event_id: str = "123e4567-e89b-12d3-a456-426614174000",
    *,
    app: str = "app-a",
    at: datetime = NOW,
    user: str = "u1",
    prompt: str = "How do I reset my password?",
) -> str:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": event_id,
            "kind": "rating",
            "occurred_at": at.isoformat(),
            "app_id": app,
            "user_id": user,
            "prompt": prompt,
            "response": "Open Settings.",
            "rating": "up",
        }
    )


def test_an_event_dated_past_the_broker_time_plus_the_skew_is_refused_future_event():
    skew = Policy().max_future_skew_s
    assert isinstance(decode_raw(_event(at=NOW + timedelta(seconds=skew)), now=NOW, max_future_s=skew), Accepted)
    late = decode_raw(_event(at=NOW + timedelta(hours=23)), now=NOW, max_future_s=skew)
    assert isinstance(late, Rejected) and late.reason == "future_event" and late.app_id == "app-a"
    assert late.errors[0]["loc"] == "occurred_at" and "2026-11-02T11:00:00Z" in late.errors[0]["msg"]
    # without a skew only the contract's day ahead applies (as before)
    assert isinstance(decode_raw(_event(at=NOW + timedelta(hours=23)), now=NOW), Accepted)


def test_a_record_timestamp_ahead_of_the_worker_clock_buys_no_skew():
    from curation.service import received_at

    assert received_at(NOW + timedelta(hours=5), NOW) == NOW
    assert received_at(NOW - timedelta(hours=5), NOW) == NOW - timedelta(hours=5)
    assert received_at(None, NOW) == NOW


def test_the_replay_judges_every_line_against_its_now():
    lines = [
        _event("00000000-0000-4000-8000-000000000001", at=NOW + timedelta(hours=2)),
        _event("00000000-0000-4000-8000-000000000002", at=NOW - timedelta(minutes=1), user="u2"),
    ]
    at_now = run_replay(lines, Policy(), now=NOW)
    assert [d["reasons"] for d in at_now.decisions] == [["future_event"], []]
    assert [d["reasons"] for d in run_replay(lines, Policy(), now=NOW + timedelta(hours=2)).decisions] == [[], []]


def test_two_apps_may_use_the_same_event_id_and_both_are_decided():
    same = "00000000-0000-4000-8000-00000000beef"
    lines = [
        _event(same, app="app-a", user="a1", prompt="How do I pair my watch?"),
        _event(same, app="app-b", user="b1", prompt="How do I cancel my plan?"),
        _event(same, app="app-a", user="a1", prompt="How do I pair my watch?"),  # app-a's retry
        json.dumps({"event_id": same, "app_id": "app-c", "kind": "rating"}),
    ]  # refused, app-c's own
    result = run_replay(lines, Policy(), now=NOW)
    assert [(d["event_id"], d["decision"], d["reasons"]) for d in result.decisions] == [
        (same, "keep", []),
        (same, "keep", []),
        (same, "drop", ["contract_schema"]),
    ]  # by (event_id, app_id)
    assert result.duplicate_ids == 1
    assert sorted(u["prompt"][0]["content"] for u in result.unpaired) == [
        "How do I cancel my plan?",
        "How do I pair my watch?",
    ]
