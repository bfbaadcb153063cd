"""The per-event first step of the stream and the replay: bytes -> a redacted Item, a rejection or a dead letter."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from curation.items import Item, build_item
from curation.pii import redact_raw, safe_errors
from curation.reasons import Reason, contract_reason
from curation.tokens import TokenCheck
from ingest.errors import EventError
from ingest.events import parse_event

_APP = re.compile(r"[a-z0-9-]{1,64}")
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
    redacted: str = ""  # the input decoded, identifiers pseudonymised and PII removed, for the rejected topic
    app_id: str = ""  # the event's app when readable: ids are unique per app, so the decision is keyed by both

    @property
    def key(self) -> tuple[str, str]:
        return (self.app_id, self.event_id)

    def decision(self) -> dict:
        return {"event_id": self.event_id, "decision": "drop", "reasons": [self.reason]}


@dataclass(frozen=True)
class DeadLetter:
    """Input with no readable event_id: no decision is possible, only a dead-letter record."""

    sha256: str
    reason: str
    redacted: str = ""


Outcome = Accepted | Rejected | DeadLetter


def _readable_ids(raw: bytes | str) -> tuple[str | None, str]:
    """(event_id, app_id) of a refused event as far as they can be read (no event_id: None; no app: "")."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None, ""
    if isinstance(data, dict) and isinstance(data.get("event_id"), str) and _UUID.fullmatch(data["event_id"]):
        app = data.get("app_id")
        return data["event_id"].lower(), app if isinstance(app, str) and _APP.fullmatch(app) else ""
    return None, ""


def decode_raw(
    raw: bytes | str,
    *,
    now: datetime | None = None,
    max_future_s: float | None = None,
    pseudonym_key: bytes | None = None,
    tokens: TokenCheck | None = None,
) -> Outcome:
    """Parse one raw event; never raises for bad input.

    `now` is the receiving clock (the broker's time in the stream, `--now` in the replay) for the contract's
    `occurred_at` window; with `max_future_s`, an event dated more than that past `now` is refused
    `future_event` (its time cannot be trusted, so it must not move a watermark). `pseudonym_key` keys the
    identifiers' pseudonyms (default: the configured one, see curation.settings). `tokens` checks the
    feedback token (the stream and the replay always pass it).
    """
    if pseudonym_key is None:
        from curation.settings import default_pseudonym_key

        pseudonym_key = default_pseudonym_key()
    raw_bytes = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    try:
        event = parse_event(raw_bytes, now=now)
    except EventError as exc:
        # what goes to .rejected and .dlq: decoded before it is redacted, identifiers pseudonymised, errors
        # naming the field and the rule but not the value
        redacted = redact_raw(raw_bytes[:70_000].decode("utf-8", "replace"), pseudonym_key)
        event_id, app_id = _readable_ids(raw_bytes)
        if event_id is None:
            return DeadLetter(hashlib.sha256(raw_bytes).hexdigest(), f"{Reason.NOT_PARSEABLE}:{exc.reason}", redacted)
        return Rejected(event_id, contract_reason(exc.reason), safe_errors(exc.errors), redacted, app_id)
    if max_future_s is not None:
        clock = now or datetime.now(UTC)
        if event.occurred_at > clock + timedelta(seconds=max_future_s):
            redacted = redact_raw(raw_bytes[:70_000].decode("utf-8", "replace"), pseudonym_key)
            return Rejected(
                str(event.event_id),
                str(Reason.FUTURE_EVENT),
                [
                    {
                        "loc": "occurred_at",
                        "msg": f"must be at most {max_future_s:g} s after the broker's time "
                        f"{clock.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}; "
                        f"got {event.occurred_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}",
                    }
                ],
                redacted,
                event.app_id,
            )
    return Accepted(build_item(event, pseudonym_key, tokens))
