"""Bounds of the chat API as plain decisions: a token bucket per key, the admission queue, the prompt's length."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from deploy.errors import ServingError


@dataclass(frozen=True)
class Bucket:
    """A key's token bucket: `tokens` left at time `at` (monotonic seconds)."""

    tokens: float
    at: float


def take_token(bucket: Bucket | None, now: float, rate: float, burst: int) -> tuple[Bucket, float]:
    """Spend one token: (the new bucket, 0.0) when the request may go, else (the refilled bucket, seconds to wait)."""
    tokens = float(burst) if bucket is None else min(float(burst), bucket.tokens + (now - bucket.at) * rate)
    if tokens >= 1.0:
        return Bucket(tokens - 1.0, now), 0.0
    return Bucket(tokens, now), (1.0 - tokens) / rate


def retry_after_header(seconds: float) -> str:
    """Retry-After is whole seconds; never 0, so a client that obeys it does not spin."""
    return str(max(1, math.ceil(seconds)))


def decide_admission(total: int, of_key: int, *, max_queue: int, max_per_key: int) -> str | None:
    """Why a new request cannot join the queue (None: it can), given what is queued now in all and for its key."""
    if total >= max_queue:
        return f"the replica's queue is full ({total} of `max_queue` {max_queue} requests waiting or generating)"
    if of_key >= max_per_key:
        return f"this key has {of_key} requests waiting or generating (`max_queue_per_key` is {max_per_key})"
    return None


def bound_prompt_text(messages: list[dict], limit: int, max_token_chars: int, overflow: str) -> list[dict]:
    """Messages whose text cannot need more than `limit` tokens' worth of tokenizing: no token covers more than
    `max_token_chars` characters, so more than limit x that many characters is surely over the limit. Refused
    (reject) before any tokenizing, or cut to the newest that many characters (truncate); `fit_prompt` then
    counts exactly. This keeps a huge prompt from costing a tokenizer pass."""
    budget = limit * max_token_chars
    total = sum(len(m["content"]) for m in messages)
    if total <= budget:
        return messages
    if overflow != "truncate":
        raise ServingError(
            f"`messages` must be at most {limit} tokens with the chat template (`max_prompt_tokens`); "
            f"got {total} characters, more than {limit} tokens can hold"
        )
    kept: list[dict] = []
    for m in reversed(messages):  # the newest first: they are what a truncated prompt keeps
        if budget <= 0:
            break
        kept.append({**m, "content": m["content"][-budget:]})
        budget -= len(m["content"])
    return kept[::-1]


def fit_prompt(ids: list[int], limit: int, overflow: str) -> list[int]:
    """The prompt's token ids within `limit`: refused (reject) or its last `limit` tokens kept (truncate), so the
    newest messages and the assistant cue at the end survive."""
    if len(ids) <= limit:
        return ids
    if overflow == "truncate":
        return ids[-limit:]
    raise ServingError(
        f"`messages` must be at most {limit} tokens with the chat template (`max_prompt_tokens`); got {len(ids)}"
    )


@dataclass
class CallerLimits:
    """The live state of the bounds on one replica; used from the event loop only, so no lock."""

    buckets: dict[str, Bucket] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    total: int = 0

    def take(self, key_id: str, now: float, rate: float, burst: int) -> float:
        """0.0 when `key_id` may send now, else seconds until it may."""
        self.buckets[key_id], wait = take_token(self.buckets.get(key_id), now, rate, burst)
        return wait

    def enter(self, key_id: str, *, max_queue: int, max_per_key: int) -> str | None:
        refused = decide_admission(self.total, self.queued.get(key_id, 0), max_queue=max_queue, max_per_key=max_per_key)
        if refused is None:
            self.total += 1
            self.queued[key_id] = self.queued.get(key_id, 0) + 1
        return refused

    def leave(self, key_id: str) -> None:
        self.total -= 1
        left = self.queued[key_id] - 1
        if left:
            self.queued[key_id] = left
        else:
            del self.queued[key_id]
