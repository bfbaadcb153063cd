"""Hypothesis strategies for v1 feedback events, for the tests of ingest and of its consumers (curation)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from ingest.events import FeedbackEvent, parse_event

NOW = datetime(2026, 6, 1, tzinfo=UTC)

_chars = st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\t\n\r")
texts = st.text(_chars, max_size=40)
short_texts = st.text(_chars, min_size=1, max_size=30)
app_ids = st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True)
_offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
timestamps = st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2026, 5, 31), timezones=_offsets).map(
    lambda d: d.isoformat()
)
messages = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": texts})
prompts = texts | st.lists(messages, min_size=1, max_size=4)
json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | texts
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_texts, inner, max_size=3),
    max_leaves=8,
)
metadata = st.dictionaries(short_texts, json_values, max_size=4)

_common = {
    "schema_version": st.just(1),
    "event_id": st.uuids().map(str),
    "occurred_at": timestamps,
    "app_id": app_ids,
    "user_id": short_texts,
    "prompt": prompts,
}
_optional = {
    "session_id": short_texts,
    "response_id": short_texts,
    "adapter_version": st.none() | short_texts,
    "feedback_token": short_texts,
    "client": st.fixed_dictionaries({}, optional={"ip_hash": short_texts, "device_id": short_texts}),
    "metadata": metadata,
}
_payloads = {
    "rating": {"response": texts, "rating": st.sampled_from(["up", "down"])},
    "edit": {"response": texts, "edited": texts},
    "comparison": {"responses": st.lists(texts, min_size=2, max_size=2), "chosen": st.sampled_from([0, 1, None])},
}


def wire_events(kind: str | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Valid v1 events as decoded JSON (dicts), as an app would send them; `parse_event(d, now=NOW)` accepts them."""
    kinds = [kind] if kind else list(_payloads)
    return st.one_of(
        *[st.fixed_dictionaries({**_common, "kind": st.just(k), **_payloads[k]}, optional=_optional) for k in kinds]
    )


def events(kind: str | None = None) -> st.SearchStrategy[FeedbackEvent]:
    """Valid v1 events as models."""
    return wire_events(kind).map(lambda d: parse_event(d, now=NOW))
