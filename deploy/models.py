"""Plain models the registry hands out: adapter versions, routing pointers, audit entries."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from alignloop.core.contracts import Lineage, Manifest

BASE = "base"  # what `rollback --to` names the base model by; no adapter version may be called this


class Status(StrEnum):
    CANDIDATE = "candidate"
    CANARY = "canary"
    ACTIVE = "active"
    RETIRED = "retired"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"  # stopped at the gate: registered for lineage and audit, never routable


class AdapterVersion(BaseModel):
    """One immutable registered adapter; only `status` and `deactivated_at` ever change."""

    model_config = ConfigDict(frozen=True)

    version: str
    base_model: str
    base_model_hash: str
    parent_version: str | None
    status: Status
    config_hash: str
    dataset_hash: str
    manifest_sha256: str
    manifest: Manifest
    lineage: Lineage
    location: str
    created_at: str
    registered_at: datetime
    registered_by: str
    deactivated_at: datetime | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "status": str(self.status),
            "base_model": self.base_model,
            "parent_version": self.parent_version,
            "dataset_hash": self.dataset_hash,
            "config_hash": self.config_hash,
            "created_at": self.created_at,
            "registered_at": self.registered_at.isoformat(),
            "registered_by": self.registered_by,
            "metrics": self.manifest.metrics,
        }


class Routing(BaseModel):
    """Where a base model's traffic goes: the active adapter (None = base) and an optional canary with a share."""

    model_config = ConfigDict(frozen=True)

    base_model: str = ""
    active: str | None = None
    canary: str | None = None
    canary_share: float = Field(default=0.0, ge=0.0, le=1.0)
    generation: int = 0
    updated_at: datetime | None = None

    def versions(self) -> set[str]:
        return {v for v in (self.active, self.canary) if v is not None}


class AuditEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    at: datetime
    actor: str
    action: str
    base_model: str
    version: str | None
    from_version: str | None
    reason: str
    detail: dict[str, Any] = Field(default_factory=dict)


class AdminToken(BaseModel):
    """What the store hands out about an admin token: its name (the audit's actor), never the token."""

    model_config = ConfigDict(frozen=True)

    token_id: str
    name: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class ServingKey(BaseModel):
    """What the store hands out about a serving API key: its caller's name and limits, never the key."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    name: str
    rate_per_s: float | None = None  # None: the replica's `key_rate_per_s`
    burst: int | None = None  # None: the replica's `key_burst`
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None
