"""Small builders of Items for the curation unit tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from curation.items import Item

T0 = datetime(2026, 11, 1, tzinfo=UTC)
_n = [0]


def make(
    kind: str = "rating",
    *,
    user: str = "u1",
    t: float = 0.0,
    prompt: str = "How do I reset my password?",
    response: str | None = "Open Settings, choose Security, then Reset password.",
    rating: str | None = "up",
    edited: str | None = None,
    responses: tuple[str, str] | None = None,
    chosen: int | None = None,
    app: str = "app",
    ip: str | None = None,
    device: str | None = None,
    event_id: str | None = None,
    adapter: str | None = None,
) -> Item:
    _n[0] += 1
    if kind == "edit":
        rating = None
        edited = edited if edited is not None else "Thanks for asking! " + (response or "")
    if kind == "comparison":
        rating, response = None, None
        responses = responses or ("Answer A is polite and short.", "Answer B: no.")
    return Item(
        event_id=event_id or str(uuid.UUID(int=_n[0] * 7919 + 17, version=4)),
        kind=kind,
        occurred_at=T0 + timedelta(seconds=t),
        app_id=app,
        user_id=user,
        prompt=(("user", prompt),),
        ip_hash=ip,
        device_id=device,
        adapter_version=adapter,
        response=response,
        rating=rating,
        edited=edited,
        responses=responses,
        chosen=chosen,
    )
