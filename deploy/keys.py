"""Serving API keys: one per chat caller (an app's backend), named, with optional own rate, only their SHA-256 stored.

A key is `ask_<key_id>_<secret>`, shown once when made; deploy.named_secrets keeps them as it keeps admin
tokens (deploy.tokens). Functions take a Session and never commit; making and revoking a key is written to
the audit log.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from alignloop.core.hashed import LookupCache
from deploy import store
from deploy.errors import RegistryError
from deploy.models import ServingKey
from deploy.named_secrets import (
    SERVING_KEY,
    check_name,
    create_secret,
    find_secret_row,
    revoke_secrets,
)


def create_serving_key(
    session: Session, name: str, *, created_by: str, rate_per_s: float | None = None, burst: int | None = None
) -> tuple[ServingKey, str]:
    """A new key for the caller `name`; returns (its record, the key). Rate and burst None: the replica's."""
    check_name(name)
    if rate_per_s is not None and not rate_per_s > 0:
        raise RegistryError(f"`rate_per_s` must be above 0; got {rate_per_s!r}")
    if burst is not None and burst < 1:
        raise RegistryError(f"`burst` must be at least 1; got {burst!r}")
    row, key = create_secret(session, SERVING_KEY, name, created_by=created_by, rate_per_s=rate_per_s, burst=burst)
    return store.to_serving_key(row), key


def list_serving_keys(session: Session, *, include_revoked: bool = True) -> list[ServingKey]:
    rows = store.select_secret_rows(session, store.ServingKeyRow, active_only=not include_revoked)
    return [store.to_serving_key(r) for r in rows]


def revoke_serving_key(session: Session, name_or_id: str, *, revoked_by: str) -> list[ServingKey]:
    """Revoke the key with this id, else every active key with this name; revoking twice keeps the first time."""
    return [store.to_serving_key(r) for r in revoke_secrets(session, SERVING_KEY, name_or_id, revoked_by=revoked_by)]


def find_serving_key(session: Session, key: str) -> ServingKey | None:
    """The active key's record, or None for an unknown, malformed or revoked one."""
    row = find_secret_row(session, SERVING_KEY, key)
    return store.to_serving_key(row) if row is not None else None


class KeyCheck:
    """A replica's check of presented keys: each answer trusted for `cache_s` seconds, then read again (a revoked
    key stops working within that time). Malformed keys never reach the registry."""

    def __init__(self, engine, cache_s: float = 5.0) -> None:
        self.engine, self.cache_s = engine, cache_s
        self._seen: LookupCache[ServingKey | None] = LookupCache(cache_s)

    def lookup(self, key: str) -> ServingKey | None:
        if not SERVING_KEY.pattern.fullmatch(key):
            return None
        return self._seen.get(key, self._read)

    def _read(self, key: str) -> ServingKey | None:
        from alignloop.core.db import session_scope

        with session_scope(self.engine) as session:
            return find_serving_key(session, key)
