"""Feedback token checks in curation: a status per event, never an error and never a drop (pure, no services)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from alignloop.core.feedback_token import sign_feedback_token
from curation.decode import Accepted, decode_raw
from curation.items import Item
from curation.pipeline import settle_window, window_start
from curation.reasons import TOKEN_VERIFIED, Reason
from curation.replay import run_replay
from curation.settings import Policy
from curation.tokens import TokenCheck, TokenStatus, check_token

KEY = b"curation-test-key-0123456789"
CHECK = TokenCheck(KEY, timedelta(hours=1))
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _token(version: str | None = "v2", rid: str = "chatcmpl-1", at: datetime = T0, key: bytes = KEY) -> str:
    return sign_feedback_token(key, response_id=rid, base_model="base", adapter_version=version, issued_at=at)


def _event(**patch) -> dict:
    return {
        "schema_version": 1,
        "event_id": "123e4567-e89b-12d3-a456-426614174000",
        "kind": "rating",
        "occurred_at": (T0 + timedelta(minutes=5)).isoformat(),
        "app_id": "app",
        "user_id": "u-1",
        "prompt": "Where is my order?",
        "response": "On its way.",
        "rating": "up",
        "response_id": "chatcmpl-1",
        "adapter_version": "v2",
        **patch,
    }


def _check(token, rid="chatcmpl-1", at=T0 + timedelta(minutes=5)) -> TokenStatus | None:
    return check_token(token, response_id=rid, occurred_at=at, check=CHECK)


def test_a_valid_token_gives_the_signed_version_base_model_and_serving_time():
    got = _check(_token())
    assert got == TokenStatus(TOKEN_VERIFIED, version="v2", base_model="base", served_at=T0, response_id="chatcmpl-1")
    assert got.verified


def test_the_base_model_serving_is_verified_with_no_version():
    got = _check(_token(None))
    assert got.verified and got.version is None and got.base_model == "base"


def test_each_bad_token_is_its_reason_and_no_token_is_none():
    assert _check(None) is None
    assert _check(_token(key=b"another-key-0123456789")).status == Reason.TOKEN_INVALID
    assert _check("alf1.garbage").status == Reason.TOKEN_INVALID
    assert _check("x" * 5000).status == Reason.TOKEN_INVALID
    assert _check(_token(), at=T0 + timedelta(hours=2)).status == Reason.TOKEN_EXPIRED
    assert _check(_token(), rid="chatcmpl-other").status == Reason.TOKEN_MISMATCH
    assert _check(_token(), rid=None).status == Reason.TOKEN_MISMATCH
    assert {str(r) for r in (Reason.TOKEN_INVALID, Reason.TOKEN_EXPIRED, Reason.TOKEN_MISMATCH)} == {
        "token_invalid",
        "token_expired",
        "token_mismatch",
    }


def test_the_status_survives_staging():
    ok = decode_raw(json.dumps(_event(feedback_token=_token())), tokens=CHECK)
    assert isinstance(ok, Accepted)
    assert Item.from_record(json.loads(json.dumps(ok.item.to_record()))) == ok.item
    old = ok.item.to_record()
    del old["token"]  # staged before tokens existed
    assert Item.from_record(old).token is None


def test_an_unverified_event_is_kept_and_trains_its_decision_row_says_why():
    policy = Policy()
    tokens = {
        "verified": _token(),
        "forged": _token(key=b"forger-key-0123456789"),
        "expired": _token(at=T0 - timedelta(hours=3)),
        "mismatch": _token(rid="chatcmpl-9"),
        "missing": None,
    }
    items = []
    for i, (name, token) in enumerate(tokens.items()):
        e = _event(
            event_id=f"123e4567-e89b-12d3-a456-42661417400{i}",
            user_id=f"u-{i}",
            prompt=f"question number {i} about my order",
            response=f"answer {i}",
        )
        if token:
            e["feedback_token"] = token
        out = decode_raw(json.dumps(e), tokens=CHECK)
        assert isinstance(out, Accepted)
        items.append((name, out.item))
    result = settle_window([it for _, it in items], window_start(items[0][1].occurred_at, policy), policy)
    rows = {d["event_id"]: d for d in result.decisions}
    got = {
        name: (
            rows[it.event_id]["decision"],
            rows[it.event_id]["reasons"],
            rows[it.event_id]["token_status"],
            rows[it.event_id]["verified_version"],
        )
        for name, it in items
    }
    assert got == {
        "verified": ("keep", [], "verified", "v2"),
        "forged": ("keep", [], "token_invalid", None),
        "expired": ("keep", [], "token_expired", None),
        "mismatch": ("keep", [], "token_mismatch", None),
        "missing": ("keep", [], None, None),
    }
    assert rows[items[0][1].event_id]["served_at"] == T0


def test_the_replay_checks_tokens_as_the_stream_does():
    lines = [json.dumps(_event(feedback_token=_token(key=b"forger-key-0123456789")))]
    replay = run_replay(lines, Policy(), tokens=CHECK)
    assert replay.windows[0].decisions[0]["token_status"] == "token_invalid"
    assert replay.decisions[0]["decision"] == "keep"
