"""API keys of the gateway (SQLAlchemy ORM kept inside this module); store functions take a Session, never commit.

A key is `alk_<key_id>_<secret>`, shown once at creation; only its SHA-256 is stored. Keys are random
256-bit tokens, so a plain digest (no slow KDF) is enough and lets the gateway check one per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import DateTime, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from alignloop.core.hashed import digest, matches, new_secret, secret_id, secret_pattern
from ingest.errors import KeyStoreError

_APP_ID = re.compile(r"[a-z0-9-]{1,64}")
_KEY = secret_pattern("alk")


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    __tablename__ = "ingest_api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64), index=True)
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    note: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class ApiKey:
    """What the store hands out about a key: never the key itself."""

    key_id: str
    app_id: str
    note: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def as_dict(self) -> dict:
        return {
            "key_id": self.key_id,
            "app_id": self.app_id,
            "note": self.note,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def _plain(row: ApiKeyRow) -> ApiKey:
    def aware(d: datetime) -> datetime:  # SQLite hands back naive datetimes
        return d.replace(tzinfo=UTC) if d.tzinfo is None else d

    revoked = row.revoked_at
    return ApiKey(row.key_id, row.app_id, row.note, aware(row.created_at), aware(revoked) if revoked else None)


def create_key(session: Session, app_id: str, note: str = "", *, now: datetime | None = None) -> tuple[ApiKey, str]:
    """A new key for `app_id`; returns (its record, the key to show once)."""
    if not _APP_ID.fullmatch(app_id):
        raise KeyStoreError(f"`app_id` must match [a-z0-9-]{{1,64}}; got {app_id!r}")
    if len(note) > 256:
        raise KeyStoreError(f"`note` must be at most 256 characters; got {len(note)}")
    key_id, key = new_secret("alk")
    row = ApiKeyRow(
        key_id=key_id,
        app_id=app_id,
        key_sha256=digest(key),
        note=note,
        created_at=now or datetime.now(UTC),
        revoked_at=None,
    )
    session.add(row)
    session.flush()
    return _plain(row), key


def list_keys(session: Session, app_id: str | None = None, *, include_revoked: bool = True) -> list[ApiKey]:
    query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.key_id)
    if app_id:
        query = query.where(ApiKeyRow.app_id == app_id)
    if not include_revoked:
        query = query.where(ApiKeyRow.revoked_at.is_(None))
    return [_plain(r) for r in session.scalars(query)]


def revoke_key(session: Session, key_id: str, *, now: datetime | None = None) -> ApiKey:
    """Revoke a key by its id (the part after `alk_`); revoking twice keeps the first time."""
    row = session.get(ApiKeyRow, key_id)
    if row is None:
        raise KeyStoreError(f"`key_id` names no API key; got {key_id!r}")
    if row.revoked_at is None:
        row.revoked_at = now or datetime.now(UTC)
        session.flush()
    return _plain(row)


def find_app_for_key(session: Session, key: str) -> str | None:
    """The app an active key belongs to, or None for an unknown, malformed or revoked key."""
    key_id = secret_id(_KEY, key)
    if key_id is None:
        return None
    row = session.get(ApiKeyRow, key_id)
    if row is None or row.revoked_at is not None or not matches(row.key_sha256, key):
        return None
    return row.app_id
