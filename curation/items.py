"""The curated view of one event: redacted texts and the fields the guards use, as a plain frozen record."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import overload

from curation.pii import pseudonymise, redact_text
from curation.reasons import Reason
from curation.tokens import TokenCheck, TokenStatus, check_token

Key = tuple[str, str]  # (app_id, event_id)


@dataclass(frozen=True, slots=True)
class Item:
    """A valid event after PII redaction; what the store stages and every guard reads."""

    event_id: str
    kind: str
    occurred_at: datetime
    app_id: str
    user_id: str
    prompt: tuple[tuple[str, str], ...]
    ip_hash: str | None = None
    device_id: str | None = None
    adapter_version: str | None = None
    response: str | None = None
    rating: str | None = None
    edited: str | None = None
    responses: tuple[str, str] | None = None
    chosen: int | None = None
    pii: tuple[str, ...] = ()
    token: TokenStatus | None = None  # the feedback token's check; None: the event carried no token

    @property
    def key(self) -> Key:
        """The idempotency key: an app's producer re-sends an event_id on retry; another app may use it too."""
        return (self.app_id, self.event_id)

    @property
    def sort_key(self) -> tuple[datetime, str, str]:
        return (self.occurred_at, self.event_id, self.app_id)

    @property
    def prompt_key(self) -> str:
        return _digest(json.dumps([self.app_id, self.prompt], ensure_ascii=False))

    @property
    def last_user_turn(self) -> str:
        for role, content in reversed(self.prompt):
            if role == "user":
                return content
        return self.prompt[-1][1] if self.prompt else ""

    def texts(self) -> list[str]:
        """Every text the event carries (prompt turns and answers)."""
        out = [c for _, c in self.prompt]
        for t in (self.response, self.edited):
            if t is not None:
                out.append(t)
        if self.responses:
            out.extend(self.responses)
        return out

    def content_key(self) -> str:
        """Same user, same judgement on the same texts: the exact-duplicate key (ids and times left out)."""
        payload = [
            self.kind,
            self.app_id,
            self.user_id,
            self.prompt,
            self.response,
            self.rating,
            self.edited,
            self.responses,
            self.chosen,
        ]
        return _digest(json.dumps(payload, ensure_ascii=False))

    def to_record(self) -> dict:
        return {
            "event_id": self.event_id,
            "kind": self.kind,
            "occurred_at": self.occurred_at.isoformat(),
            "app_id": self.app_id,
            "user_id": self.user_id,
            "prompt": [list(m) for m in self.prompt],
            "ip_hash": self.ip_hash,
            "device_id": self.device_id,
            "adapter_version": self.adapter_version,
            "response": self.response,
            "rating": self.rating,
            "edited": self.edited,
            "responses": list(self.responses) if self.responses else None,
            "chosen": self.chosen,
            "pii": list(self.pii),
            "token": self.token.to_record() if self.token else None,
        }

    @classmethod
    def from_record(cls, r: dict) -> Item:
        return cls(
            event_id=r["event_id"],
            kind=r["kind"],
            occurred_at=datetime.fromisoformat(r["occurred_at"]),
            app_id=r["app_id"],
            user_id=r["user_id"],
            prompt=tuple((m[0], m[1]) for m in r["prompt"]),
            ip_hash=r.get("ip_hash"),
            device_id=r.get("device_id"),
            adapter_version=r.get("adapter_version"),
            response=r.get("response"),
            rating=r.get("rating"),
            edited=r.get("edited"),
            responses=tuple(r["responses"]) if r.get("responses") else None,
            chosen=r.get("chosen"),
            pii=tuple(r.get("pii") or ()),
            token=TokenStatus.from_record(r["token"]) if r.get("token") else None,
        )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def build_item(event, key: bytes, tokens: TokenCheck | None = None) -> Item:
    """A validated ingest event -> its redacted Item. PII leaves here, before anything is written anywhere.

    Texts are redacted (the event is decoded, so JSON escapes hide nothing); identifiers (user, device, source)
    become keyed pseudonyms, deterministic so that every guard still counts per account and per source;
    `adapter_version` is redacted (canary counts compare it with registered version names, so it stays text).
    With `tokens`, the event's feedback token is checked here (without, a token is left unchecked: unverified).
    """
    found: set[Reason] = set()

    @overload
    def clean(text: str) -> str: ...
    @overload
    def clean(text: str | None) -> str | None: ...
    def clean(text: str | None) -> str | None:
        if text is None:
            return None
        out, hits = redact_text(text)
        found.update(hits)
        return out

    @overload
    def pseudonym(field: str, value: str) -> str: ...
    @overload
    def pseudonym(field: str, value: str | None) -> str | None: ...
    def pseudonym(field: str, value: str | None) -> str | None:
        if value is None:
            return None
        found.update(redact_text(value)[1])  # an id that carried PII still says so in the decision
        return pseudonymise(key, field, value)

    client = getattr(event, "client", None)
    responses = getattr(event, "responses", None)
    item = Item(
        event_id=str(event.event_id),
        kind=event.kind,
        occurred_at=event.occurred_at.astimezone(UTC),
        app_id=event.app_id,
        user_id=pseudonym("user_id", event.user_id),
        prompt=tuple((m.role, clean(m.content)) for m in event.prompt),
        ip_hash=pseudonym("ip_hash", client.ip_hash) if client else None,
        device_id=pseudonym("device_id", client.device_id) if client else None,
        adapter_version=clean(event.adapter_version),
        response=clean(getattr(event, "response", None)),
        rating=getattr(event, "rating", None),
        edited=clean(getattr(event, "edited", None)),
        responses=(clean(responses[0]), clean(responses[1])) if responses else None,
        chosen=getattr(event, "chosen", None),
        pii=tuple(sorted(found)),
        token=check_token(
            event.feedback_token, response_id=event.response_id, occurred_at=event.occurred_at, check=tokens
        )
        if tokens is not None
        else None,
    )
    return item
