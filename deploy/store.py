"""The registry's tables (SQLAlchemy ORM, kept inside this module) and store functions handing out plain models."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import DateTime, Float, ForeignKey, Integer, String, Text, func, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from alignloop.core.contracts import parse_lineage, parse_manifest
from deploy.models import AdapterVersion, AdminToken, AuditEntry, Routing, ServingKey


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class VersionRow(Base):
    __tablename__ = "deploy_adapter_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    base_model: Mapped[str] = mapped_column(String(512), index=True)
    base_model_hash: Mapped[str] = mapped_column(String(128))
    parent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    config_hash: Mapped[str] = mapped_column(String(128))
    dataset_hash: Mapped[str] = mapped_column(String(128))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    manifest_json: Mapped[str] = mapped_column(Text)
    lineage_json: Mapped[str] = mapped_column(Text)
    location: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[str] = mapped_column(String(64))
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    registered_by: Mapped[str] = mapped_column(String(128))
    # when it last stopped being active: "the previous active" is the newest retired one
    deactivated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RoutingRow(Base):
    __tablename__ = "deploy_routing"

    base_model: Mapped[str] = mapped_column(String(512), primary_key=True)
    active_version: Mapped[str | None] = mapped_column(ForeignKey("deploy_adapter_versions.version"), nullable=True)
    canary_version: Mapped[str | None] = mapped_column(ForeignKey("deploy_adapter_versions.version"), nullable=True)
    canary_share: Mapped[float] = mapped_column(Float, default=0.0)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRow(Base):
    __tablename__ = "deploy_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str] = mapped_column(String(512))
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    from_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    detail_json: Mapped[str] = mapped_column(Text, default="{}")


class AdminTokenRow(Base):
    """An admin API token: its name is who acts in the audit log; only the token's SHA-256 is kept."""

    __tablename__ = "deploy_admin_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ServingKeyRow(Base):
    """An API key of a chat caller (an app's backend); only the key's SHA-256 is kept."""

    __tablename__ = "deploy_serving_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    rate_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    burst: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def _aware(dt: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written as UTC
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def to_version(row: VersionRow) -> AdapterVersion:
    return AdapterVersion(
        version=row.version,
        base_model=row.base_model,
        base_model_hash=row.base_model_hash,
        parent_version=row.parent_version,
        status=row.status,
        config_hash=row.config_hash,
        dataset_hash=row.dataset_hash,
        manifest_sha256=row.manifest_sha256,
        manifest=parse_manifest(row.manifest_json),
        lineage=parse_lineage(row.lineage_json),
        location=row.location,
        created_at=row.created_at,
        registered_at=_aware(row.registered_at),
        registered_by=row.registered_by,
        deactivated_at=_aware(row.deactivated_at),
    )


def to_routing(row: RoutingRow | None, base_model: str) -> Routing:
    if row is None:
        return Routing(base_model=base_model)
    return Routing(
        base_model=row.base_model,
        active=row.active_version,
        canary=row.canary_version,
        canary_share=row.canary_share if row.canary_version else 0.0,
        generation=row.generation,
        updated_at=_aware(row.updated_at),
    )


def to_audit(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=_aware(row.at),
        actor=row.actor,
        action=row.action,
        base_model=row.base_model,
        version=row.version,
        from_version=row.from_version,
        reason=row.reason,
        detail=json.loads(row.detail_json or "{}"),
    )


def get_version_row(session: Session, version: str) -> VersionRow | None:
    return session.get(VersionRow, version)


def add_version_row(session: Session, row: VersionRow) -> None:
    session.add(row)
    session.flush()


def select_versions(session: Session, base_model: str | None = None) -> list[VersionRow]:
    q = select(VersionRow).order_by(VersionRow.registered_at, VersionRow.version)
    if base_model is not None:
        q = q.where(VersionRow.base_model == base_model)
    return list(session.scalars(q))


def newest_candidate(session: Session, base_model: str) -> VersionRow | None:
    """The last registered version still waiting for its move (what a replica stages)."""
    q = (
        select(VersionRow)
        .where(VersionRow.base_model == base_model, VersionRow.status == "candidate")
        .order_by(VersionRow.registered_at.desc(), VersionRow.version.desc())
    )
    return session.scalars(q.limit(1)).first()


def newest_retired(session: Session, base_model: str, exclude: str | None) -> VersionRow | None:
    q = (
        select(VersionRow)
        .where(
            VersionRow.base_model == base_model, VersionRow.status == "retired", VersionRow.deactivated_at.is_not(None)
        )
        .order_by(VersionRow.deactivated_at.desc())
    )
    if exclude is not None:
        q = q.where(VersionRow.version != exclude)
    return session.scalars(q.limit(1)).first()


def lock_routing_row(session: Session, base_model: str) -> RoutingRow:
    """The routing row, locked for update (PostgreSQL), created on first use."""
    row = session.scalars(select(RoutingRow).where(RoutingRow.base_model == base_model).with_for_update()).first()
    if row is None:
        row = RoutingRow(
            base_model=base_model,
            active_version=None,
            canary_version=None,
            canary_share=0.0,
            generation=0,
            updated_at=utcnow(),
        )
        session.add(row)
        session.flush()
    return row


def read_routing_row(session: Session, base_model: str) -> RoutingRow | None:
    return session.get(RoutingRow, base_model)


def select_routing_rows(session: Session) -> list[RoutingRow]:
    return list(session.scalars(select(RoutingRow).order_by(RoutingRow.base_model)))


def add_audit(
    session: Session,
    *,
    actor: str,
    action: str,
    base_model: str,
    version: str | None,
    from_version: str | None,
    reason: str,
    detail: dict | None = None,
) -> None:
    session.add(
        AuditRow(
            at=utcnow(),
            actor=actor,
            action=action,
            base_model=base_model,
            version=version,
            from_version=from_version,
            reason=reason,
            detail_json=json.dumps(detail or {}, sort_keys=True),
        )
    )
    session.flush()


def first_audit_at(session: Session, *, base_model: str, action: str, version: str) -> datetime | None:
    """When `action` was first recorded for `version` of `base_model` (None if never)."""
    q = select(func.min(AuditRow.at)).where(
        AuditRow.base_model == base_model, AuditRow.action == action, AuditRow.version == version
    )
    return _aware(session.scalar(q))


def select_audit(session: Session, limit: int | None = None) -> list[AuditRow]:
    q = select(AuditRow).order_by(AuditRow.id)
    if limit is not None:
        q = q.order_by(None).order_by(AuditRow.id.desc()).limit(limit)
        return list(reversed(list(session.scalars(q))))
    return list(session.scalars(q))


def count_versions(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(VersionRow)) or 0


# ------------------------------------------------------------------ named secrets (admin tokens, serving keys)
SecretRow = AdminTokenRow | ServingKeyRow
SecretRowT = TypeVar("SecretRowT", AdminTokenRow, ServingKeyRow)  # one kind of secret at a time


def to_admin_token(row: AdminTokenRow) -> AdminToken:
    return AdminToken(
        token_id=row.token_id,
        name=row.name,
        created_at=_aware(row.created_at),
        created_by=row.created_by,
        revoked_at=_aware(row.revoked_at),
    )


def to_serving_key(row: ServingKeyRow) -> ServingKey:
    return ServingKey(
        key_id=row.key_id,
        name=row.name,
        rate_per_s=row.rate_per_s,
        burst=row.burst,
        created_at=_aware(row.created_at),
        created_by=row.created_by,
        revoked_at=_aware(row.revoked_at),
    )


def add_secret_row(session: Session, row: SecretRow) -> None:
    session.add(row)
    session.flush()


def get_secret_row(session: Session, row_type: type[SecretRowT], secret_id: str) -> SecretRowT | None:
    return session.get(row_type, secret_id)


def select_secret_rows(
    session: Session, row_type: type[SecretRowT], *, name: str | None = None, active_only: bool = False
) -> list[SecretRowT]:
    """The rows of one kind of secret, oldest first (then by id), of one name and only active ones if asked."""
    q = select(row_type).order_by(row_type.created_at, *inspect(row_type).primary_key)
    if name is not None:
        q = q.where(row_type.name == name)
    if active_only:
        q = q.where(row_type.revoked_at.is_(None))
    return list(session.scalars(q))
