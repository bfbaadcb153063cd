"""The adapter registry: register, canary, promote, roll back, read. Functions take a Session and never commit."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from deploy import store
from deploy.artifacts import LINEAGE, ArtifactStorage, LoadedArtifact, LocalArtifactStorage, load_artifact_dir
from deploy.control import publish_routing_change
from deploy.errors import ArtifactError, NotFoundError, RegistryError
from deploy.models import BASE, AdapterVersion, AuditEntry, Routing, Status

__all__ = [
    "AdapterVersion",
    "AuditEntry",
    "Routing",
    "Status",
    "audit_log",
    "canary_started_at",
    "default_storage",
    "get_routing",
    "get_version",
    "list_routings",
    "list_versions",
    "load_version_artifact",
    "local_artifact_dir",
    "newest_candidate",
    "promote",
    "publish_routing_change",
    "register_adapter",
    "reject_candidate",
    "rollback",
    "rollback_target",
    "start_canary",
]


def default_storage() -> LocalArtifactStorage:
    from deploy.settings import get_settings

    return LocalArtifactStorage(get_settings().resolved_artifact_root())


def _require_actor(actor: str, reason: str) -> None:
    if not actor or not actor.strip():
        raise RegistryError("`actor` must name who makes the change; got an empty string")
    if not reason or not reason.strip():
        raise RegistryError("`reason` must say why (it goes to the audit log); got an empty string")


def _row(session: Session, version: str) -> store.VersionRow:
    row = store.get_version_row(session, version)
    if row is None:
        raise NotFoundError(f"adapter version {version!r} is not registered")
    return row


def load_version_artifact(version: AdapterVersion, storage: ArtifactStorage | None = None) -> LoadedArtifact:
    """The registered artifact, re-read and verified (manifest sha256 from the registry, then every file's)."""
    art = (storage or default_storage()).load(version.location, manifest_sha256=version.manifest_sha256)
    if art.manifest.version != version.version:
        raise ArtifactError(
            f"artifact at {version.location!r} says version {art.manifest.version!r}, registry says {version.version!r}"
        )
    return art


def local_artifact_dir(version: AdapterVersion, storage: LocalArtifactStorage | None = None) -> Path:
    """The directory of a registered artifact on this machine, verified (manifest and every file's sha256) first.

    For readers that need files, not bytes (training continued from an adapter, evaluation against it).
    """
    storage = storage or default_storage()
    load_version_artifact(version, storage)
    return storage.path_of(version.location)


def _verify(row: store.VersionRow, storage: ArtifactStorage | None) -> None:
    load_version_artifact(store.to_version(row), storage)


def register_adapter(
    session: Session,
    artifact_dir: str | os.PathLike,
    *,
    actor: str,
    reason: str,
    storage: ArtifactStorage | None = None,
) -> AdapterVersion:
    """Verify an artifact directory and copy it into the artifact root as a new `candidate` version.

    Registering the same bytes again returns the existing version; other bytes under a taken name are refused.
    """
    _require_actor(actor, reason)
    art = load_artifact_dir(artifact_dir)
    m = art.manifest
    if m.version == BASE:
        raise RegistryError(f"`version` {BASE!r} is reserved: `rollback --to {BASE}` names the base model by it")
    existing = store.get_version_row(session, m.version)
    if existing is not None:
        if existing.manifest_sha256 == art.manifest_sha256:
            return store.to_version(existing)
        raise RegistryError(
            f"version {m.version!r} is already registered with another manifest "
            f"(sha256 {existing.manifest_sha256[:12]}...); versions are immutable"
        )
    manifest_bytes = (Path(artifact_dir) / "manifest.json").read_bytes()
    location = (storage or default_storage()).save(art, manifest_bytes)
    row = store.VersionRow(
        version=m.version,
        base_model=m.base_model,
        base_model_hash=m.base_model_hash,
        parent_version=m.parent_version,
        status=Status.CANDIDATE.value,
        config_hash=m.config_hash,
        dataset_hash=m.dataset.hash,
        manifest_sha256=art.manifest_sha256,
        manifest_json=manifest_bytes.decode(),
        lineage_json=art.files[LINEAGE].decode(),
        location=location,
        created_at=m.created_at,
        registered_at=store.utcnow(),
        registered_by=actor,
        deactivated_at=None,
    )
    store.add_version_row(session, row)
    store.add_audit(
        session,
        actor=actor,
        action="register",
        base_model=m.base_model,
        version=m.version,
        from_version=m.parent_version,
        reason=reason,
        detail={"manifest_sha256": art.manifest_sha256, "bytes": art.total_bytes},
    )
    return store.to_version(row)


def _bump(routing: store.RoutingRow) -> None:
    routing.generation = (routing.generation or 0) + 1
    routing.updated_at = store.utcnow()
    if routing.canary_version is None:
        routing.canary_share = 0.0


def reject_candidate(session: Session, version: str, *, actor: str, reason: str) -> AdapterVersion:
    """Mark a candidate that failed its gates as `rejected` (it can never be routed) and say why in the audit log."""
    _require_actor(actor, reason)
    row = _row(session, version)
    if row.status != Status.CANDIDATE:
        raise RegistryError(f"only a candidate can be rejected; {version!r} is {row.status}")
    row.status = Status.REJECTED.value
    store.add_audit(
        session,
        actor=actor,
        action="reject",
        base_model=row.base_model,
        version=version,
        from_version=None,
        reason=reason,
        detail={},
    )
    return store.to_version(row)


def start_canary(
    session: Session, version: str, share: float, *, actor: str, reason: str, storage: ArtifactStorage | None = None
) -> Routing:
    """Send `share` of users (sticky by user id) to a candidate; calling again on the canary changes its share."""
    _require_actor(actor, reason)
    if not 0.0 < share <= 1.0:
        raise RegistryError(f"`share` must be in (0, 1]; got {share!r}")
    row = _row(session, version)
    routing = store.lock_routing_row(session, row.base_model)
    if routing.canary_version not in (None, version):
        raise RegistryError(
            f"canary {routing.canary_version!r} is already running for {row.base_model!r}; "
            "promote it or roll it back first"
        )
    if row.status not in (Status.CANDIDATE, Status.CANARY):
        raise RegistryError(f"only a candidate can become the canary; {version!r} is {row.status}")
    _verify(row, storage)
    before = routing.canary_share if routing.canary_version else None
    row.status = Status.CANARY.value
    routing.canary_version = version
    routing.canary_share = float(share)
    _bump(routing)
    store.add_audit(
        session,
        actor=actor,
        action="canary",
        base_model=row.base_model,
        version=version,
        from_version=routing.active_version,
        reason=reason,
        detail={"share": share, "previous_share": before, "generation": routing.generation},
    )
    return store.to_routing(routing, row.base_model)


def promote(
    session: Session,
    version: str | None = None,
    *,
    actor: str,
    reason: str,
    base_model: str | None = None,
    storage: ArtifactStorage | None = None,
) -> Routing:
    """Make `version` (default: the running canary) the active adapter; the previous active is retired."""
    _require_actor(actor, reason)
    if version is None:
        bm = _resolve_base_model(session, base_model)
        routing = store.lock_routing_row(session, bm)
        if routing.canary_version is None:
            raise RegistryError(f"no canary is running for {bm!r}; name the version to promote")
        version = routing.canary_version
    row = _row(session, version)
    routing = store.lock_routing_row(session, row.base_model)
    if routing.active_version == version:
        raise RegistryError(f"version {version!r} is already active for {row.base_model!r}")
    if routing.canary_version not in (None, version):
        raise RegistryError(
            f"canary {routing.canary_version!r} is running; promote it or roll it back before promoting {version!r}"
        )
    if row.status not in (Status.CANDIDATE, Status.CANARY, Status.RETIRED):
        raise RegistryError(
            f"version {version!r} is {row.status}; only a candidate, the canary or a retired "
            "version can be promoted (use `rollback --to` to restore a rolled-back one)"
        )
    _verify(row, storage)
    previous = routing.active_version
    now = store.utcnow()
    if previous is not None:
        prev = _row(session, previous)
        prev.status = Status.RETIRED.value
        prev.deactivated_at = now
    row.status = Status.ACTIVE.value
    routing.active_version = version
    if routing.canary_version == version:
        routing.canary_version = None
    _bump(routing)
    store.add_audit(
        session,
        actor=actor,
        action="promote",
        base_model=row.base_model,
        version=version,
        from_version=previous,
        reason=reason,
        detail={"generation": routing.generation},
    )
    return store.to_routing(routing, row.base_model)


def _resolve_base_model(session: Session, base_model: str | None) -> str:
    if base_model is not None:
        return base_model
    rows = store.select_routing_rows(session)
    if len(rows) == 1:
        return rows[0].base_model
    if not rows:
        raise RegistryError("nothing is deployed yet: no routing exists for any base model")
    raise RegistryError(
        f"{len(rows)} base models are routed; name one with `base_model` ({', '.join(r.base_model for r in rows)})"
    )


def rollback(
    session: Session,
    *,
    to: str | None = None,
    actor: str,
    reason: str,
    base_model: str | None = None,
    storage: ArtifactStorage | None = None,
) -> Routing:
    """Undo the last move: a running canary is stopped; else the active goes back to the previous active (or base).

    With `to`, that previously active version becomes active at once and any canary is stopped too.
    `to=BASE` ("base") serves the base model: it loads no artifact, so it works whatever state the adapters'
    files are in. Whatever is rolled back gets status `rolled_back`.
    """
    _require_actor(actor, reason)
    if to == BASE:
        return _rollback_to_base(session, actor=actor, reason=reason, base_model=base_model)
    if to is not None:
        target = _row(session, to)
        bm = target.base_model
        if base_model is not None and base_model != bm:
            raise RegistryError(f"version {to!r} belongs to base model {bm!r}, not {base_model!r}")
    else:
        target = None
        bm = _resolve_base_model(session, base_model)
    routing = store.lock_routing_row(session, bm)
    now = store.utcnow()
    stopped_canary = routing.canary_version
    if to is None and stopped_canary is not None:
        _row(session, stopped_canary).status = Status.ROLLED_BACK.value
        routing.canary_version = None
        _bump(routing)
        store.add_audit(
            session,
            actor=actor,
            action="rollback",
            base_model=bm,
            version=routing.active_version,
            from_version=stopped_canary,
            reason=reason,
            detail={"stopped": "canary", "generation": routing.generation},
        )
        return store.to_routing(routing, bm)
    current = routing.active_version
    if to is None:
        if current is None:
            raise RegistryError(f"nothing to roll back for {bm!r}: no canary and no active adapter")
        target = store.newest_retired(session, bm, exclude=current)
    else:
        if current == to:
            raise RegistryError(f"version {to!r} is already active for {bm!r}")
        assert target is not None  # read above whenever `to` is given
        if target.status not in (Status.RETIRED, Status.ROLLED_BACK):
            raise RegistryError(
                f"`to` must name a version that was active before (retired or rolled_back); {to!r} is {target.status}"
            )
    if target is not None:
        _verify(target, storage)
        target.status = Status.ACTIVE.value
    if current is not None:
        cur = _row(session, current)
        cur.status = Status.ROLLED_BACK.value
        cur.deactivated_at = now
    if stopped_canary is not None:
        _row(session, stopped_canary).status = Status.ROLLED_BACK.value
        routing.canary_version = None
    routing.active_version = target.version if target is not None else None
    _bump(routing)
    store.add_audit(
        session,
        actor=actor,
        action="rollback",
        base_model=bm,
        version=routing.active_version,
        from_version=current,
        reason=reason,
        detail={"stopped": "active", "canary_stopped": stopped_canary, "generation": routing.generation},
    )
    return store.to_routing(routing, bm)


def _rollback_to_base(session: Session, *, actor: str, reason: str, base_model: str | None) -> Routing:
    """The way out that needs nothing but the registry's own rows: active and canary off, the base model serves."""
    bm = _resolve_base_model(session, base_model)
    routing = store.lock_routing_row(session, bm)
    current, stopped_canary = routing.active_version, routing.canary_version
    now = store.utcnow()
    for version in (current, stopped_canary):
        if version is not None:
            row = _row(session, version)
            row.status = Status.ROLLED_BACK.value
            row.deactivated_at = now if version == current else row.deactivated_at
    routing.active_version = None
    routing.canary_version = None
    _bump(routing)
    store.add_audit(
        session,
        actor=actor,
        action="rollback",
        base_model=bm,
        version=None,
        from_version=current,
        reason=reason,
        detail={"stopped": "active", "to": BASE, "canary_stopped": stopped_canary, "generation": routing.generation},
    )
    return store.to_routing(routing, bm)


def get_routing(session: Session, base_model: str) -> Routing:
    return store.to_routing(store.read_routing_row(session, base_model), base_model)


def canary_started_at(session: Session, base_model: str) -> datetime | None:
    """When the running canary of `base_model` started (its first "canary" audit entry); None without a canary.

    A later share change of the same canary moves the routing's `updated_at`, not this."""
    row = store.read_routing_row(session, base_model)
    if row is None or row.canary_version is None:
        return None
    return (
        store.first_audit_at(session, base_model=base_model, action="canary", version=row.canary_version)
        or store.to_routing(row, base_model).updated_at
    )


def list_routings(session: Session) -> list[Routing]:
    return [store.to_routing(r, r.base_model) for r in store.select_routing_rows(session)]


def list_versions(session: Session, base_model: str | None = None) -> list[AdapterVersion]:
    return [store.to_version(r) for r in store.select_versions(session, base_model)]


def newest_candidate(session: Session, base_model: str) -> AdapterVersion | None:
    row = store.newest_candidate(session, base_model)
    return None if row is None else store.to_version(row)


def rollback_target(session: Session, base_model: str, active: str | None) -> str | None:
    """The version a plain `rollback` of `active` returns to (None: the base model)."""
    row = store.newest_retired(session, base_model, exclude=active)
    return None if row is None else row.version


def get_version(session: Session, version: str) -> AdapterVersion:
    return store.to_version(_row(session, version))


def audit_log(session: Session, limit: int | None = None) -> list[AuditEntry]:
    return [store.to_audit(r) for r in store.select_audit(session, limit)]
