"""The chat API's bounds as plain decisions: token bucket, admission, prompt fitting."""

from __future__ import annotations

import pytest

from deploy.errors import ServingError
from deploy.limits import CallerLimits, decide_admission, fit_prompt, retry_after_header, take_token


def test_a_bucket_lets_a_burst_through_then_the_rate():
    bucket, waits = None, []
    for _ in range(4):
        bucket, wait = take_token(bucket, 100.0, rate=2.0, burst=3)
        waits.append(wait)
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] == pytest.approx(0.5)
    bucket, wait = take_token(bucket, 100.5, rate=2.0, burst=3)  # half a second later: one token refilled
    assert wait == 0.0
    bucket, wait = take_token(bucket, 1000.0, rate=2.0, burst=3)  # a long pause refills to the burst, no more
    assert wait == 0.0 and bucket.tokens == pytest.approx(2.0)


def test_a_refused_request_spends_nothing():
    bucket, _ = take_token(None, 0.0, rate=1.0, burst=1)
    for _ in range(5):  # hammering while empty does not push the next allowed time further out
        bucket, wait = take_token(bucket, 0.5, rate=1.0, burst=1)
    assert wait == pytest.approx(0.5)
    assert take_token(bucket, 1.0, rate=1.0, burst=1)[1] == 0.0


@pytest.mark.parametrize("seconds, header", [(0.01, "1"), (1.0, "1"), (1.2, "2"), (30, "30")])
def test_retry_after_is_whole_seconds_never_zero(seconds, header):
    assert retry_after_header(seconds) == header


def test_admission_bounds_the_queue_and_each_keys_share():
    assert decide_admission(3, 0, max_queue=4, max_per_key=2) is None
    assert "queue is full (4 of `max_queue` 4" in decide_admission(4, 0, max_queue=4, max_per_key=2)
    assert "`max_queue_per_key` is 2" in decide_admission(2, 2, max_queue=4, max_per_key=2)
    limits = CallerLimits()
    assert [limits.enter("a", max_queue=3, max_per_key=2) is None for _ in range(3)] == [True, True, False]
    assert limits.enter("b", max_queue=3, max_per_key=2) is None
    assert limits.enter("b", max_queue=3, max_per_key=2) is not None  # the queue is full now
    limits.leave("a")
    limits.leave("a")
    limits.leave("b")
    assert limits.total == 0 and limits.queued == {}


def test_a_long_prompt_is_refused_or_keeps_its_last_tokens():
    ids = list(range(10))
    assert fit_prompt(ids, 10, "reject") == ids
    assert fit_prompt(ids, 4, "truncate") == [6, 7, 8, 9]
    with pytest.raises(ServingError, match=r"`messages` must be at most 4 tokens .*; got 10"):
        fit_prompt(ids, 4, "reject")


def test_a_prompt_surely_over_the_limit_is_refused_or_cut_before_tokenizing():
    from deploy.limits import bound_prompt_text

    msgs = [
        {"role": "system", "content": "s" * 10},
        {"role": "user", "content": "u" * 30},
        {"role": "assistant", "content": "a" * 5},
    ]
    assert bound_prompt_text(msgs, 10, 5, "reject") is msgs  # 45 characters can be 10 tokens of 5
    with pytest.raises(ServingError, match=r"at most 4 tokens .*got 45 characters"):
        bound_prompt_text(msgs, 4, 5, "reject")
    cut = bound_prompt_text(msgs, 4, 5, "truncate")  # 20 characters kept, the newest
    assert cut == [{"role": "user", "content": "u" * 15}, {"role": "assistant", "content": "a" * 5}]
