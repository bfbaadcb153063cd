"""Named secrets in the registry (admin tokens, serving keys): made, listed, revoked and found one way.

Only a secret's SHA-256 is stored (alignloop.core.hashed). Making and revoking one is written to the audit log.
Functions take a Session and never commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Generic

from sqlalchemy.orm import Session

from alignloop.core.hashed import digest, matches, new_secret, secret_id, secret_pattern
from deploy import store
from deploy.errors import NotFoundError, RegistryError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True)
class SecretKind(Generic[store.SecretRowT]):
    """One kind of named secret: its prefix, its words in messages and the audit, its table and columns."""

    prefix: str  # a secret is `<prefix>_<id>_<random>`
    noun: str  # "admin token": in messages, audit reasons and (with _) audit actions
    row_type: type[store.SecretRowT]
    id_attr: str
    hash_attr: str
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", secret_pattern(self.prefix))

    @property
    def action(self) -> str:
        return self.noun.replace(" ", "_")


ADMIN_TOKEN: SecretKind[store.AdminTokenRow] = SecretKind(
    "ada", "admin token", store.AdminTokenRow, "token_id", "token_sha256"
)
SERVING_KEY: SecretKind[store.ServingKeyRow] = SecretKind(
    "ask", "serving key", store.ServingKeyRow, "key_id", "key_sha256"
)


def check_name(name: object, why: str = "") -> None:
    """Refuse a name that is not 1-64 of [A-Za-z0-9._@-] starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistryError(f"`name` must match [A-Za-z0-9][A-Za-z0-9._@-]{{0,63}}{why}; got {name!r}")


def create_secret(
    session: Session, kind: SecretKind[store.SecretRowT], name: str, *, created_by: str, **columns: Any
) -> tuple[store.SecretRowT, str]:
    """A new secret of `kind` for `name` (its other columns given); returns (its row, the secret to show once)."""
    new_id, secret = new_secret(kind.prefix)
    row = kind.row_type(
        **{kind.id_attr: new_id, kind.hash_attr: digest(secret)},
        name=name,
        created_at=store.utcnow(),
        created_by=created_by,
        revoked_at=None,
        **columns,
    )
    store.add_secret_row(session, row)
    store.add_audit(
        session,
        actor=created_by,
        action=f"{kind.action}_create",
        base_model="",
        version=None,
        from_version=None,
        reason=f"{kind.noun} {name!r} made",
        detail={kind.id_attr: new_id},
    )
    return row, secret


def revoke_secrets(
    session: Session, kind: SecretKind[store.SecretRowT], name_or_id: str, *, revoked_by: str
) -> list[store.SecretRowT]:
    """Revoke the secret with this id, else every active one with this name; revoking twice keeps the first time."""
    row = store.get_secret_row(session, kind.row_type, name_or_id)
    rows = (
        [row]
        if row is not None
        else store.select_secret_rows(session, kind.row_type, name=name_or_id, active_only=True)
    )
    if not rows:
        raise NotFoundError(f"`name_or_id` names no active {kind.noun}; got {name_or_id!r}")
    now = store.utcnow()
    for r in rows:
        if r.revoked_at is None:
            r.revoked_at = now
            store.add_audit(
                session,
                actor=revoked_by,
                action=f"{kind.action}_revoke",
                base_model="",
                version=None,
                from_version=None,
                reason=f"{kind.noun} {r.name!r} revoked",
                detail={kind.id_attr: getattr(r, kind.id_attr)},
            )
    session.flush()
    return rows


def find_secret_row(session: Session, kind: SecretKind[store.SecretRowT], secret: str) -> store.SecretRowT | None:
    """The active secret's row, or None for an unknown, malformed or revoked one."""
    found_id = secret_id(kind.pattern, secret)
    if found_id is None:
        return None
    row = store.get_secret_row(session, kind.row_type, found_id)
    if row is None or row.revoked_at is not None or not matches(getattr(row, kind.hash_attr), secret):
        return None
    return row
