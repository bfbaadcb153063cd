"""The v1 feedback event: the wire contract between product apps, the gateway and curation (DESIGN.md).

One JSON object per event, refused as a whole when any rule breaks. A breaking change is a v2 model,
never an edit of this one. Pure: no I/O; the receiving clock is passed in (`now`) or read once.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from alignloop_sdk.errors import EventError

__all__ = [
    "EARLIEST",
    "FEEDBACK_TOPIC",
    "MAX_AHEAD",
    "MAX_EVENT_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_TEXT_BYTES",
    "MAX_TOKEN_CHARS",
    "SCHEMA_VERSION",
    "ClientInfo",
    "ComparisonEvent",
    "EditEvent",
    "FeedbackEvent",
    "Message",
    "RatingEvent",
    "decode_json",
    "encode_event",
    "event_json_schema",
    "event_key",
    "new_event_id",
    "parse_event",
    "validate_event",
]

SCHEMA_VERSION = 1
FEEDBACK_TOPIC = "alignloop.feedback.v1"  # where v1 events go; `.rejected` and `.dlq` hang from it
MAX_TEXT_BYTES = 32 * 1024
MAX_EVENT_BYTES = 64 * 1024
MAX_METADATA_BYTES = 4 * 1024
MAX_METADATA_DEPTH = 8
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
MAX_AHEAD = timedelta(days=1)
MAX_TOKEN_CHARS = 2048  # alignloop.core.feedback_token.MAX_TOKEN_CHARS; the SDK stands alone, so the number is repeated

# Unicode Cc except tab, LF, CR; lone surrogates (JSON `\ud800`) are not valid UTF-8 either.
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PAYLOAD_FIELDS = {
    "rating": {"response", "rating"},
    "edit": {"response", "edited"},
    "comparison": {"responses", "chosen"},
}
_FIELD_KIND = {"rating": "rating", "edited": "edit", "responses": "comparison", "chosen": "comparison"}


def _seen(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------ field rules
def _check_text(value: str) -> str:
    bad = _BAD_CHARS.search(value)
    if bad:
        raise PydanticCustomError(
            "text_chars",
            "text must be valid UTF-8 without control characters but tab, LF, CR; got {char} at offset {offset}",
            {"char": repr(bad.group()), "offset": bad.start()},
        )
    if len(value) * 4 > MAX_TEXT_BYTES and len(value.encode("utf-8")) > MAX_TEXT_BYTES:
        raise PydanticCustomError(
            "too_large",
            "text must be at most {limit} bytes as UTF-8; got {size}",
            {"limit": MAX_TEXT_BYTES, "size": len(value.encode("utf-8"))},
        )
    return value


Text = Annotated[str, Strict(), AfterValidator(_check_text), Field(json_schema_extra={"maxLength": MAX_TEXT_BYTES})]
ShortText = Annotated[str, Strict(), Field(min_length=1, max_length=256), AfterValidator(_check_text)]
# the contract checks only the shape: a token curation cannot verify marks the event unverified, it does not refuse it
FeedbackToken = Annotated[
    str,
    Strict(),
    Field(min_length=1, max_length=MAX_TOKEN_CHARS),
    AfterValidator(_check_text),
    Field(
        description="v1 addition: the `feedback_token` serving returned with the judged "
        "answer; binds response_id, base model and serving version"
    ),
]


def _exact_int(value: Any) -> Any:
    # bools and floats equal 0/1 in Python; on the wire only the JSON integers count
    if value is not None and type(value) is not int:
        raise PydanticCustomError("int_type", "must be a JSON integer; got {seen}", {"seen": _seen(value)})
    return value


def _timestamp_input(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        return value
    raise PydanticCustomError(
        "timestamp",
        "must be an RFC 3339 timestamp with zone, like 2026-01-31T12:00:00Z; got {seen}",
        {"seen": _seen(value)},
    )


def _uuid_input(value: Any) -> Any:
    if isinstance(value, uuid.UUID) or (isinstance(value, str) and _UUID.fullmatch(value)):
        return value
    raise PydanticCustomError(
        "uuid", "must be a UUID string like 123e4567-e89b-12d3-a456-426614174000; got {seen}", {"seen": _seen(value)}
    )


def _json_depth(value: Any, depth: int = 1) -> int:
    if isinstance(value, dict):
        return max((_json_depth(v, depth + 1) for v in value.values()), default=depth)
    if isinstance(value, list):
        return max((_json_depth(v, depth + 1) for v in value), default=depth)
    return depth - 1


def _json_strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _json_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _json_strings(v)


def _check_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    depth = _json_depth(value, 1)
    if depth > MAX_METADATA_DEPTH:
        raise PydanticCustomError(
            "nesting",
            "must nest at most {limit} levels deep; got {depth}",
            {"limit": MAX_METADATA_DEPTH, "depth": depth},
        )
    for s in _json_strings(value):
        _check_text(s)
    try:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())
    except ValueError:
        raise PydanticCustomError("json_number", "numbers must be finite JSON numbers (no NaN or Infinity)") from None
    if size > MAX_METADATA_BYTES:
        raise PydanticCustomError(
            "too_large",
            "must be at most {limit} bytes as compact JSON; got {size}",
            {"limit": MAX_METADATA_BYTES, "size": size},
        )
    return value


# ------------------------------------------------------------------ models
class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Message(_Frozen):
    """One turn of the conversation that led to the judged answer."""

    role: Literal["system", "user", "assistant"]
    content: Text


class ClientInfo(_Frozen):
    """The END user's source: `ip_hash` a keyed HMAC of their address (the gateway makes it from the app's
    `client.ip`; never the gateway's own peer, never the address itself), `device_id` as the app names it."""

    ip_hash: ShortText | None = None
    device_id: ShortText | None = None


def _non_empty_prompt(value: tuple) -> tuple:
    if not value:
        raise PydanticCustomError("too_short", "must hold at least one message; got none")
    return value


def _prompt_input(value: Any) -> Any:
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    return value


Prompt = Annotated[
    tuple[Message, ...],
    BeforeValidator(
        _prompt_input,
        json_schema_input_type=(
            Annotated[str, Field(json_schema_extra={"maxLength": MAX_TEXT_BYTES})]
            | Annotated[list[Message], Field(min_length=1)]
        ),
    ),
    AfterValidator(_non_empty_prompt),
    Field(description="the conversation up to the judged answer; a string is one user message"),
]


class _EventBase(_Frozen):
    schema_version: Annotated[Literal[1], BeforeValidator(_exact_int)]
    kind: str  # narrowed to one literal by each event class; declared here to come third on the wire
    event_id: Annotated[
        uuid.UUID,
        BeforeValidator(_uuid_input, json_schema_input_type=str),
        Field(json_schema_extra={"format": "uuid"}),
        Field(description="idempotency key: a producer re-sends the same id on retry"),
    ]
    occurred_at: Annotated[
        datetime,
        BeforeValidator(_timestamp_input, json_schema_input_type=str),
        Field(json_schema_extra={"format": "date-time"}),
        Field(description="RFC 3339 timestamp with zone; from 2000-01-01 to one day ahead of the receiving clock"),
    ]
    app_id: Annotated[str, Strict(), Field(pattern=r"^[a-z0-9-]{1,64}$")]
    user_id: Annotated[str, Strict(), Field(min_length=1, max_length=128), AfterValidator(_check_text)]
    session_id: ShortText | None = None
    prompt: Prompt
    response_id: ShortText | None = None
    adapter_version: ShortText | None = None
    feedback_token: FeedbackToken | None = None
    client: ClientInfo | None = None
    metadata: Annotated[
        dict[str, JsonValue] | None,
        AfterValidator(_check_metadata),
        Field(description="free-form; at most 4 KiB as compact JSON, nested at most 8 deep"),
    ] = None

    @field_validator("occurred_at")
    @classmethod
    def _in_window(cls, value: datetime, info: ValidationInfo) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise PydanticCustomError(
                "timestamp", "must carry a time zone (Z or +hh:mm); got {seen}", {"seen": value.isoformat()}
            )
        value = value.astimezone(UTC)
        now = (info.context or {}).get("now") or datetime.now(UTC)
        if value < EARLIEST:
            raise PydanticCustomError(
                "time_window", "must not be before 2000-01-01T00:00:00Z; got {seen}", {"seen": value.isoformat()}
            )
        if value > now + MAX_AHEAD:
            raise PydanticCustomError(
                "time_window",
                "must not be more than one day ahead of the receiving clock ({now}); got {seen}",
                {"now": now.isoformat(), "seen": value.isoformat()},
            )
        return value

    def __hash__(self) -> int:
        # metadata is a dict, so the default field hash would fail; equal events share an event_id
        return hash((self.kind, self.event_id))


class RatingEvent(_EventBase):
    """Thumbs up or down on one answer."""

    kind: Literal["rating"]
    response: Text
    rating: Literal["up", "down"]


class EditEvent(_EventBase):
    """The user rewrote the answer: `edited` is preferred over `response`."""

    kind: Literal["edit"]
    response: Text
    edited: Text


class ComparisonEvent(_EventBase):
    """A side-by-side choice between two answers; `chosen` null is a tie (kept, no pair)."""

    kind: Literal["comparison"]
    responses: Annotated[tuple[Text, Text], Field(description="exactly two answers")]
    chosen: Annotated[Literal[0, 1] | None, BeforeValidator(_exact_int)]


def _kind_of(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return value.get("kind")
    return getattr(value, "kind", None)


FeedbackEvent = Annotated[
    Annotated[RatingEvent, Tag("rating")]
    | Annotated[EditEvent, Tag("edit")]
    | Annotated[ComparisonEvent, Tag("comparison")],
    Discriminator(
        _kind_of, custom_error_type="kind", custom_error_message='`kind` must be "rating", "edit" or "comparison"'
    ),
]
EVENT_MODELS: dict[str, type[_EventBase]] = {"rating": RatingEvent, "edit": EditEvent, "comparison": ComparisonEvent}
_ADAPTER: TypeAdapter = TypeAdapter(FeedbackEvent)


# ------------------------------------------------------------------ decoding
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # in C; only a shorter dict means a key came twice, and then we look for which
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        self.key = key
        super().__init__(key)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_json(raw: bytes | str, *, limit: int | None = MAX_EVENT_BYTES) -> Any:
    """JSON text -> Python values, refusing what the contract refuses: bad UTF-8, duplicate keys, NaN."""
    size = len(raw) if isinstance(raw, bytes | bytearray) else len(raw.encode("utf-8", "surrogatepass"))
    if limit is not None and size > limit:
        raise EventError("too_large", [{"loc": "", "msg": f"an event must be at most {limit} bytes; got {size}"}])
    if isinstance(raw, bytes | bytearray):
        data = bytes(raw)
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = data[exc.start : exc.start + 1]
            raise EventError(
                "not_utf8", [{"loc": "", "msg": f"body must be valid UTF-8; got byte {bad!r} at offset {exc.start}"}]
            ) from exc
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except _DuplicateKey as exc:
        msg = f"duplicate key {exc.key!r}: each key at most once"
        raise EventError("duplicate_key", [{"loc": exc.key, "msg": msg}]) from exc
    except (ValueError, RecursionError) as exc:
        raise EventError("not_json", [{"loc": "", "msg": f"body must be JSON; {exc}"}]) from exc


def _loc(parts: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in parts)


def _translate(exc: ValidationError, data: Mapping[str, Any]) -> EventError:
    kind = data.get("kind") if isinstance(data, Mapping) else None
    errors: list[dict[str, str]] = []
    too_large = False
    for e in exc.errors(include_url=False):
        loc = e["loc"]
        if loc and loc[0] == kind:  # the union tag that pydantic puts first
            loc = loc[1:]
        etype = e["type"]
        if etype in ("kind", "union_tag_not_found", "union_tag_invalid"):
            errors.append({"loc": "kind", "msg": f'must be "rating", "edit" or "comparison"; got {_seen(kind)}'})
            continue
        if etype == "missing":
            msg = "field required"
        elif etype == "extra_forbidden":
            name = str(loc[-1]) if loc else ""
            other = _FIELD_KIND.get(name) if len(loc) == 1 else None
            if other and other != kind:
                msg = f"`{name}` is a field of kind {other!r}, not of {kind!r}"
            else:
                msg = f"unknown field; got {_seen(e['input'])}"
        elif e.get("ctx") and etype in (
            "text_chars",
            "too_large",
            "time_window",
            "timestamp",
            "uuid",
            "int_type",
            "nesting",
            "json_number",
            "too_short",
        ):
            msg = e["msg"]
        else:
            msg = f"{e['msg']}; got {_seen(e['input'])}"
        too_large = too_large or etype == "too_large"
        errors.append({"loc": _loc(loc), "msg": msg})
    return EventError("too_large" if too_large else "schema", errors)


def validate_event(data: Any, *, now: datetime | None = None) -> FeedbackEvent:
    """Python values (a decoded JSON object) -> a validated event, or EventError."""
    if not isinstance(data, Mapping):
        msg = f"an event must be a JSON object; got {type(data).__name__}"
        raise EventError("not_object", [{"loc": "", "msg": msg}])
    try:
        return _ADAPTER.validate_python(data, context={"now": now} if now else None)
    except ValidationError as exc:
        raise _translate(exc, data) from None


def parse_event(raw: bytes | str | Mapping[str, Any], *, now: datetime | None = None) -> FeedbackEvent:
    """Bytes, text or a mapping -> a v1 event. Raises EventError naming every broken rule.

    `now` is the receiving clock for the occurred_at window (default: the current time).
    A mapping is measured by its compact JSON encoding for the 64 KiB limit.
    """
    if isinstance(raw, Mapping):
        try:
            text = json.dumps(raw, separators=(",", ":"), ensure_ascii=False, default=str)
            size = len(text.encode("utf-8", "surrogatepass"))
        except (TypeError, ValueError):
            size = 0
        if size > MAX_EVENT_BYTES:
            msg = f"an event must be at most {MAX_EVENT_BYTES} bytes; got {size}"
            raise EventError("too_large", [{"loc": "", "msg": msg}])
        return validate_event(raw, now=now)
    return validate_event(decode_json(raw), now=now)


# ------------------------------------------------------------------ encoding and keys
def encode_event(event: _EventBase) -> bytes:
    """Compact, stable JSON (field order of the model, UTC timestamps); raises EventError past 64 KiB."""
    # the serializer directly: model_dump_json's wrapper costs as much as the serialisation on the SDK's hot path
    data = event.__pydantic_serializer__.to_json(event, exclude_defaults=True)
    if len(data) > MAX_EVENT_BYTES:
        raise EventError(
            "too_large", [{"loc": "", "msg": f"an event must be at most {MAX_EVENT_BYTES} bytes; got {len(data)}"}]
        )
    return data


def event_key(event: _EventBase) -> bytes:
    """Kafka key: a stable hash of app and conversation (session_id, else the prompt), 32 hex bytes."""
    h = hashlib.sha256(event.app_id.encode())
    if event.session_id:
        h.update(b"\x00s\x00" + event.session_id.encode())
    else:
        # NUL and SOH never occur in texts (control characters are refused), so they separate unambiguously
        h.update(b"\x00p\x00" + b"".join(f"{m.role}\x00{m.content}\x01".encode() for m in event.prompt))
    return h.hexdigest()[:32].encode()


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a v1 event, as committed in ingest/schema/feedback-event-v1.json."""
    schema = _ADAPTER.json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://alignloop.dev/schema/feedback-event-v1.json",
        "title": "alignloop feedback event v1",
        **schema,
    }


def new_event_id() -> uuid.UUID:
    return uuid.uuid4()
