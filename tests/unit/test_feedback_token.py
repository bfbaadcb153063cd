"""Feedback tokens: sign and verify, and every way a token is refused (pure, no services)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignloop.core.feedback_token import (
    TokenProblem,
    TokenRejection,
    VerifiedToken,
    sign_feedback_token,
    verify_feedback_token,
)

KEY = b"k" * 32
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def _sign(**kw) -> str:
    return sign_feedback_token(
        KEY,
        **{"response_id": "chatcmpl-1", "base_model": "/models/tiny", "adapter_version": "a-1", "issued_at": T0, **kw},
    )


def test_a_token_verifies_to_what_was_signed():
    got = verify_feedback_token(KEY, _sign(), now=T0 + timedelta(hours=3), max_age=DAY)
    assert got == VerifiedToken(
        response_id="chatcmpl-1", base_model="/models/tiny", adapter_version="a-1", issued_at=T0
    )


def test_the_base_model_is_a_null_version():
    got = verify_feedback_token(KEY, _sign(adapter_version=None), now=T0, max_age=DAY)
    assert isinstance(got, VerifiedToken) and got.adapter_version is None


def test_the_token_is_compact_url_safe_and_versioned():
    token = _sign()
    assert token.startswith("alf1.")
    assert set(token) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    assert len(token) < 200


def test_another_key_is_a_bad_signature():
    got = verify_feedback_token(b"x" * 32, _sign(), now=T0, max_age=DAY)
    assert isinstance(got, TokenRejection) and got.problem is TokenProblem.BAD_SIGNATURE


def test_a_rewritten_payload_is_a_bad_signature():
    prefix, payload, mac = _sign().split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["v"] = "a-canary"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    got = verify_feedback_token(KEY, f"{prefix}.{forged}.{mac}", now=T0, max_age=DAY)
    assert isinstance(got, TokenRejection) and got.problem is TokenProblem.BAD_SIGNATURE


@pytest.mark.parametrize("age", [DAY + timedelta(seconds=1), -(DAY + timedelta(seconds=1)), timedelta(days=400)])
def test_outside_max_age_either_side_is_expired(age):
    got = verify_feedback_token(KEY, _sign(), now=T0 + age, max_age=DAY)
    assert isinstance(got, TokenRejection) and got.problem is TokenProblem.EXPIRED, got


def test_at_max_age_it_still_verifies():
    assert isinstance(verify_feedback_token(KEY, _sign(), now=T0 + DAY, max_age=DAY), VerifiedToken)


@pytest.mark.parametrize(
    "token", ["", "alf1", "alf1..", "alf2.e30.AAAA", "alf1.e30", "a.b.c.d", "é" * 10, "alf1." + "A" * 3000 + ".x"]
)
def test_malformed_tokens_are_refused_not_raised(token):
    got = verify_feedback_token(KEY, token, now=T0, max_age=DAY)
    assert isinstance(got, TokenRejection) and got.problem in (TokenProblem.MALFORMED, TokenProblem.BAD_SIGNATURE)


def test_a_signed_payload_of_the_wrong_shape_is_malformed():
    # signed with the right key (as a leaked key or a bug would), but not what serving writes
    payload = base64.urlsafe_b64encode(b'{"r":"x"}').rstrip(b"=").decode()
    mac = base64.urlsafe_b64encode(hmac.new(KEY, f"alf1.{payload}".encode(), hashlib.sha256).digest())
    got = verify_feedback_token(KEY, f"alf1.{payload}.{mac.rstrip(b'=').decode()}", now=T0, max_age=DAY)
    assert isinstance(got, TokenRejection) and got.problem is TokenProblem.MALFORMED


def test_a_short_key_is_refused():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        sign_feedback_token(b"short", response_id="r", base_model="b", adapter_version=None, issued_at=T0)


_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=80)


@settings(max_examples=300)
@given(
    response_id=_text,
    base_model=_text,
    version=st.none() | _text,
    issued=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)),
    data=st.data(),
)
def test_a_token_verifies_and_no_one_byte_change_does(response_id, base_model, version, issued, data):
    token = sign_feedback_token(
        KEY, response_id=response_id, base_model=base_model, adapter_version=version, issued_at=issued
    )
    got = verify_feedback_token(KEY, token, now=issued, max_age=DAY)
    assert got == VerifiedToken(response_id, base_model, version, issued.replace(microsecond=0))
    i = data.draw(st.integers(0, len(token) - 1), label="position")
    new = data.draw(st.sampled_from([c for c in "abcXYZ019-_.=+/é" if c != token[i]]), label="replacement")
    changed = token[:i] + new + token[i + 1 :]
    assert isinstance(verify_feedback_token(KEY, changed, now=issued, max_age=DAY), TokenRejection)


def test_the_key_is_the_env_one_else_one_local_secret(monkeypatch, tmp_path):
    from alignloop.core.errors import AlignloopError
    from alignloop.core.settings import CoreSettings

    monkeypatch.delenv("ALIGNLOOP_FEEDBACK_TOKEN_KEY", raising=False)
    monkeypatch.setenv("ALIGNLOOP_HOME", str(tmp_path))
    local = CoreSettings().resolved_feedback_token_key()
    assert local == CoreSettings().resolved_feedback_token_key() and len(local) >= 32
    assert (tmp_path / "secrets" / "feedback-token").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("ALIGNLOOP_FEEDBACK_TOKEN_KEY", "s" * 40)
    assert CoreSettings().resolved_feedback_token_key() == b"s" * 40
    monkeypatch.setenv("ALIGNLOOP_FEEDBACK_TOKEN_KEY", "short")
    with pytest.raises(AlignloopError, match=r"ALIGNLOOP_FEEDBACK_TOKEN_KEY.*at least 16 bytes; got 5"):
        CoreSettings().resolved_feedback_token_key()
