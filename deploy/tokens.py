"""Admin API tokens: named (the name is the audit's actor), several at once, only their SHA-256 stored.

A token is `ada_<token_id>_<secret>`, shown once when made. Tokens are random 256-bit values, so a plain
digest (no slow KDF) is enough and lets a replica check one per request. Functions take a Session and never
commit; making and revoking a token is itself written to the audit log.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy.orm import Session

from deploy import store
from deploy.errors import NotFoundError, RegistryError
from deploy.models import AdminToken

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_TOKEN = re.compile(r"ada_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_admin_token(session: Session, name: str, *, created_by: str) -> tuple[AdminToken, str]:
    """A new token for `name` (several may share one, e.g. while rotating); returns (its record, the token)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistryError(f"`name` must match [A-Za-z0-9][A-Za-z0-9._@-]{{0,63}} (it is the audit's actor); "
                            f"got {name!r}")
    token_id = secrets.token_hex(6)
    token = f"ada_{token_id}_{secrets.token_urlsafe(32)}"
    row = store.AdminTokenRow(token_id=token_id, name=name, token_sha256=digest(token), created_at=store.utcnow(),
                              created_by=created_by, revoked_at=None)
    store.add_admin_token_row(session, row)
    store.add_audit(session, actor=created_by, action="admin_token_create", base_model="", version=None,
                    from_version=None, reason=f"admin token {name!r} made", detail={"token_id": token_id})
    return store.to_admin_token(row), token


def list_admin_tokens(session: Session, *, include_revoked: bool = True) -> list[AdminToken]:
    return [store.to_admin_token(r) for r in store.select_admin_token_rows(session, active_only=not include_revoked)]


def revoke_admin_token(session: Session, name_or_id: str, *, revoked_by: str) -> list[AdminToken]:
    """Revoke the token with this id, else every active token with this name; revoking twice keeps the first time."""
    row = store.get_admin_token_row(session, name_or_id)
    rows = [row] if row is not None else store.select_admin_token_rows(session, name=name_or_id, active_only=True)
    if not rows:
        raise NotFoundError(f"`name_or_id` names no active admin token; got {name_or_id!r}")
    now = store.utcnow()
    for r in rows:
        if r.revoked_at is None:
            r.revoked_at = now
            store.add_audit(session, actor=revoked_by, action="admin_token_revoke", base_model="", version=None,
                            from_version=None, reason=f"admin token {r.name!r} revoked",
                            detail={"token_id": r.token_id})
    session.flush()
    return [store.to_admin_token(r) for r in rows]


def find_admin_name(session: Session, token: str) -> str | None:
    """The name of an active token, or None for an unknown, malformed or revoked one."""
    match = _TOKEN.fullmatch(token)
    if not match:
        return None
    row = store.get_admin_token_row(session, match.group(1))
    if row is None or row.revoked_at is not None or not secrets.compare_digest(row.token_sha256, digest(token)):
        return None
    return row.name


def any_admin_tokens(session: Session) -> bool:
    """Whether any token is active: without one the admin API is off."""
    return bool(store.select_admin_token_rows(session, active_only=True))


class TokenCheck:
    """A replica's check of presented tokens: each answer trusted for `cache_s` seconds, then read again
    (so a revoked token stops working within that time without a registry read per request)."""

    def __init__(self, engine, cache_s: float = 5.0) -> None:
        self.engine, self.cache_s = engine, cache_s
        self._names: dict[str, tuple[str | None, float]] = {}
        self._enabled: tuple[bool, float] = (False, 0.0)

    def name(self, token: str) -> str | None:
        """The active token's name, or None."""
        import time

        from alignloop.core.db import session_scope

        key, now = digest(token), time.monotonic()
        hit = self._names.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        with session_scope(self.engine) as session:
            name = find_admin_name(session, token)
        if len(self._names) > 10_000:
            self._names.clear()
        self._names[key] = (name, now + self.cache_s)
        return name

    def enabled(self) -> bool:
        """Whether any token is active (the admin API is off without one)."""
        import time

        from alignloop.core.db import session_scope

        now = time.monotonic()
        if self._enabled[1] <= now:
            with session_scope(self.engine) as session:
                self._enabled = (any_admin_tokens(session), now + self.cache_s)
        return self._enabled[0]
