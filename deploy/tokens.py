"""Admin API tokens: named (the name is the audit's actor), several at once, only their SHA-256 stored.

A token is `ada_<token_id>_<secret>`, shown once when made (deploy.named_secrets keeps them, as it keeps
serving keys). Functions take a Session and never commit; making and revoking a token is itself written to
the audit log.
"""

from __future__ import annotations

import time

from sqlalchemy.orm import Session

from alignloop.core.hashed import LookupCache
from deploy import store
from deploy.models import AdminToken
from deploy.named_secrets import (
    ADMIN_TOKEN,
    check_name,
    create_secret,
    find_secret_row,
    revoke_secrets,
)


def create_admin_token(session: Session, name: str, *, created_by: str) -> tuple[AdminToken, str]:
    """A new token for `name` (several may share one, e.g. while rotating); returns (its record, the token)."""
    check_name(name, " (it is the audit's actor)")
    row, token = create_secret(session, ADMIN_TOKEN, name, created_by=created_by)
    return store.to_admin_token(row), token


def list_admin_tokens(session: Session, *, include_revoked: bool = True) -> list[AdminToken]:
    rows = store.select_secret_rows(session, store.AdminTokenRow, active_only=not include_revoked)
    return [store.to_admin_token(r) for r in rows]


def revoke_admin_token(session: Session, name_or_id: str, *, revoked_by: str) -> list[AdminToken]:
    """Revoke the token with this id, else every active token with this name; revoking twice keeps the first time."""
    return [store.to_admin_token(r) for r in revoke_secrets(session, ADMIN_TOKEN, name_or_id, revoked_by=revoked_by)]


def find_admin_name(session: Session, token: str) -> str | None:
    """The name of an active token, or None for an unknown, malformed or revoked one."""
    row = find_secret_row(session, ADMIN_TOKEN, token)
    return row.name if row is not None else None


def any_admin_tokens(session: Session) -> bool:
    """Whether any token is active: without one the admin API is off."""
    return bool(store.select_secret_rows(session, store.AdminTokenRow, active_only=True))


class TokenCheck:
    """A replica's check of presented tokens: each answer trusted for `cache_s` seconds, then read again
    (so a revoked token stops working within that time without a registry read per request)."""

    def __init__(self, engine, cache_s: float = 5.0) -> None:
        self.engine, self.cache_s = engine, cache_s
        self._names: LookupCache[str | None] = LookupCache(cache_s)
        self._enabled: tuple[bool, float] = (False, 0.0)

    def name(self, token: str) -> str | None:
        """The active token's name, or None."""
        return self._names.get(token, self._read_name)

    def _read_name(self, token: str) -> str | None:
        from alignloop.core.db import session_scope

        with session_scope(self.engine) as session:
            return find_admin_name(session, token)

    def enabled(self) -> bool:
        """Whether any token is active (the admin API is off without one)."""
        from alignloop.core.db import session_scope

        now = time.monotonic()
        if self._enabled[1] <= now:
            with session_scope(self.engine) as session:
                self._enabled = (any_admin_tokens(session), now + self.cache_s)
        return self._enabled[0]
