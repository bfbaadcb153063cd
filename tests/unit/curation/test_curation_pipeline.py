"""decode -> stage -> settle: outcomes per event, determinism in input order, and the acceptance on a small stream."""

import json
import random

import pytest

from curation.decode import Accepted, DeadLetter, Rejected, decode_raw
from curation.pipeline import window_start
from curation.replay import run_replay
from curation.settings import Policy
from support.stream.generate import generate
from support.stream.score import score

GOOD = {
    "schema_version": 1,
    "event_id": "123e4567-e89b-12d3-a456-426614174000",
    "kind": "rating",
    "occurred_at": "2026-11-01T00:00:00Z",
    "app_id": "app",
    "user_id": "jo@example.com",
    "prompt": "my card is 4111 1111 1111 1111",
    "response": "ok",
    "rating": "up",
}


def test_decode_outcomes():
    ok = decode_raw(json.dumps(GOOD))
    assert isinstance(ok, Accepted)
    assert "4111" not in ok.item.prompt[0][1] and ok.item.user_id.startswith("u_")
    assert set(ok.item.pii) == {"pii_card", "pii_email"}
    bad = decode_raw(json.dumps({**GOOD, "rating": "meh"}))
    assert isinstance(bad, Rejected) and bad.reason == "contract_schema"
    assert bad.decision() == {"event_id": GOOD["event_id"], "decision": "drop", "reasons": ["contract_schema"]}
    assert "4111" not in bad.redacted and "jo@example.com" not in bad.redacted
    for raw in (b"{nope", b"[1, 2]", json.dumps({**GOOD, "event_id": "not-a-uuid"}).encode(), b"\xff\xfe"):
        assert isinstance(decode_raw(raw), DeadLetter)


def test_windows_align_on_the_epoch():
    from datetime import UTC, datetime

    p = Policy(window_s=1800)
    assert window_start(datetime(2026, 11, 1, 0, 44, tzinfo=UTC), p) == datetime(2026, 11, 1, 0, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def small_stream():
    return generate(seed=11, scale=0.2, hours=3.0)


def test_decisions_do_not_depend_on_arrival_order(small_stream):
    lines, _, _ = small_stream
    base = run_replay(lines, Policy())
    shuffled = list(lines)
    random.Random(2).shuffle(shuffled)
    again = run_replay(shuffled, Policy())
    # the first copy of a repeated event_id wins; the generator's replays are byte-identical, so order is free
    assert again.decisions == base.decisions
    assert again.pairs == base.pairs and again.unpaired == base.unpaired
    assert sorted(d["sha256"] for d in again.dlq) == sorted(d["sha256"] for d in base.dlq)


def test_acceptance_on_a_small_attacked_stream(small_stream):
    lines, truth, world = small_stream
    result = run_replay(lines, Policy())
    s = score(truth, world, result.decisions, result.pairs, result.unpaired, result.dlq)
    failed = {k: v for k, v in s["acceptance"].items() if not v}
    assert not failed, json.dumps(s, indent=1)
