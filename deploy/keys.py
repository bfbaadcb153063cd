"""Serving API keys: one per chat caller (an app's backend), named, with optional own rate, only their SHA-256 stored.

A key is `ask_<key_id>_<secret>`, shown once when made; as with admin tokens (deploy.tokens) and the gateway's
keys (ingest.store), a key is a random 256-bit value, so a plain digest is enough to check one per request.
Functions take a Session and never commit; making and revoking a key is written to the audit log.
"""

from __future__ import annotations

import re
import secrets
import time

from sqlalchemy.orm import Session

from deploy import store
from deploy.errors import NotFoundError, RegistryError
from deploy.models import ServingKey
from deploy.tokens import digest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_KEY = re.compile(r"ask_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})")


def create_serving_key(session: Session, name: str, *, created_by: str, rate_per_s: float | None = None,
                       burst: int | None = None) -> tuple[ServingKey, str]:
    """A new key for the caller `name`; returns (its record, the key). Rate and burst None: the replica's."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistryError(f"`name` must match [A-Za-z0-9][A-Za-z0-9._@-]{{0,63}}; got {name!r}")
    if rate_per_s is not None and not rate_per_s > 0:
        raise RegistryError(f"`rate_per_s` must be above 0; got {rate_per_s!r}")
    if burst is not None and burst < 1:
        raise RegistryError(f"`burst` must be at least 1; got {burst!r}")
    key_id = secrets.token_hex(6)
    key = f"ask_{key_id}_{secrets.token_urlsafe(32)}"
    row = store.ServingKeyRow(key_id=key_id, name=name, key_sha256=digest(key), rate_per_s=rate_per_s, burst=burst,
                              created_at=store.utcnow(), created_by=created_by, revoked_at=None)
    store.add_serving_key_row(session, row)
    store.add_audit(session, actor=created_by, action="serving_key_create", base_model="", version=None,
                    from_version=None, reason=f"serving key {name!r} made", detail={"key_id": key_id})
    return store.to_serving_key(row), key


def list_serving_keys(session: Session, *, include_revoked: bool = True) -> list[ServingKey]:
    return [store.to_serving_key(r) for r in store.select_serving_key_rows(session, active_only=not include_revoked)]


def revoke_serving_key(session: Session, name_or_id: str, *, revoked_by: str) -> list[ServingKey]:
    """Revoke the key with this id, else every active key with this name; revoking twice keeps the first time."""
    row = store.get_serving_key_row(session, name_or_id)
    rows = [row] if row is not None else store.select_serving_key_rows(session, name=name_or_id, active_only=True)
    if not rows:
        raise NotFoundError(f"`name_or_id` names no active serving key; got {name_or_id!r}")
    now = store.utcnow()
    for r in rows:
        if r.revoked_at is None:
            r.revoked_at = now
            store.add_audit(session, actor=revoked_by, action="serving_key_revoke", base_model="", version=None,
                            from_version=None, reason=f"serving key {r.name!r} revoked", detail={"key_id": r.key_id})
    session.flush()
    return [store.to_serving_key(r) for r in rows]


def find_serving_key(session: Session, key: str) -> ServingKey | None:
    """The active key's record, or None for an unknown, malformed or revoked one."""
    match = _KEY.fullmatch(key)
    if not match:
        return None
    row = store.get_serving_key_row(session, match.group(1))
    if row is None or row.revoked_at is not None or not secrets.compare_digest(row.key_sha256, digest(key)):
        return None
    return store.to_serving_key(row)


class KeyCheck:
    """A replica's check of presented keys: each answer trusted for `cache_s` seconds, then read again (a revoked
    key stops working within that time). Malformed keys never reach the registry."""

    def __init__(self, engine, cache_s: float = 5.0) -> None:
        self.engine, self.cache_s = engine, cache_s
        self._seen: dict[str, tuple[ServingKey | None, float]] = {}

    def lookup(self, key: str) -> ServingKey | None:
        from alignloop.core.db import session_scope

        if not _KEY.fullmatch(key):
            return None
        cache_key, now = digest(key), time.monotonic()
        hit = self._seen.get(cache_key)
        if hit is not None and hit[1] > now:
            return hit[0]
        with session_scope(self.engine) as session:
            found = find_serving_key(session, key)
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[cache_key] = (found, now + self.cache_s)
        return found
