"""The per-event first step shared by the stream and the replay: bytes -> a redacted Item, a rejection or a dead letter."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime

from ingest.errors import EventError
from ingest.events import parse_event

from curation.items import Item, build_item
from curation.pii import redact_text
from curation.reasons import Reason, contract_reason
from curation.tokens import TokenCheck

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class Accepted:
    item: Item


@dataclass(frozen=True)
class Rejected:
    """A readable event that breaks the v1 contract: it gets a drop decision and goes to `.rejected`."""

    event_id: str
    reason: str
    errors: list[dict] = field(default_factory=list)
    redacted: str = ""  # the raw text with PII removed, for the rejected topic

    def decision(self) -> dict:
        return {"event_id": self.event_id, "decision": "drop", "reasons": [self.reason]}


@dataclass(frozen=True)
class DeadLetter:
    """Input with no readable event_id: no decision is possible, only a dead-letter record."""

    sha256: str
    reason: str
    redacted: str = ""


Outcome = Accepted | Rejected | DeadLetter


def _readable_id(raw: bytes | str) -> str | None:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict) and isinstance(data.get("event_id"), str) and _UUID.fullmatch(data["event_id"]):
        return data["event_id"].lower()
    return None


def decode_raw(raw: bytes | str, *, now: datetime | None = None, tokens: TokenCheck | None = None) -> Outcome:
    """Parse one raw event; never raises for bad input. `now` is the receiving clock for `occurred_at`;
    `tokens` checks the feedback token (the stream and the replay always pass it)."""
    if isinstance(raw, str):
        raw_bytes = raw.encode("utf-8", "surrogatepass")
    else:
        raw_bytes = bytes(raw)
    try:
        event = parse_event(raw_bytes, now=now)
    except EventError as exc:
        text = raw_bytes.decode("utf-8", "replace")
        redacted = redact_text(text[:70_000])[0]
        event_id = _readable_id(raw_bytes)
        if event_id is None:
            return DeadLetter(hashlib.sha256(raw_bytes).hexdigest(), f"{Reason.NOT_PARSEABLE}:{exc.reason}", redacted)
        return Rejected(event_id, contract_reason(exc.reason), list(exc.errors), redacted)
    return Accepted(build_item(event, tokens))
