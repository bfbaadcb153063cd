"""The v1 feedback event, as the service sees it: defined once in the SDK (`alignloop_sdk.events`), re-exported here."""

from __future__ import annotations

from alignloop_sdk.events import (
    EARLIEST,
    FEEDBACK_TOPIC,
    MAX_AHEAD,
    MAX_EVENT_BYTES,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_TEXT_BYTES,
    MAX_TOKEN_CHARS,
    SCHEMA_VERSION,
    ClientInfo,
    ComparisonEvent,
    EditEvent,
    FeedbackEvent,
    Message,
    RatingEvent,
    decode_json,
    encode_event,
    event_json_schema,
    event_key,
    new_event_id,
    parse_event,
    validate_event,
)

__all__ = [
    "EARLIEST", "FEEDBACK_TOPIC", "MAX_AHEAD", "MAX_EVENT_BYTES", "MAX_METADATA_BYTES", "MAX_METADATA_DEPTH",
    "MAX_TEXT_BYTES", "MAX_TOKEN_CHARS", "SCHEMA_VERSION", "ClientInfo", "ComparisonEvent", "EditEvent",
    "FeedbackEvent", "Message", "RatingEvent", "decode_json", "encode_event", "event_json_schema", "event_key",
    "new_event_id", "parse_event", "validate_event",
]
