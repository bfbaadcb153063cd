"""The one store the loop shares: every stage's Alembic branch, listed by import so the import linter sees it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alignloop.core import migrations
from curation.migrations import FOLDER as CURATION_MIGRATIONS
from deploy.migrations import FOLDER as DEPLOY_MIGRATIONS
from ingest.migrations import FOLDER as INGEST_MIGRATIONS

if TYPE_CHECKING:
    from sqlalchemy import Engine

# retrain has no tables of its own: it reads curation's through curation.query
STAGE_MIGRATIONS: tuple[Path, ...] = (INGEST_MIGRATIONS, CURATION_MIGRATIONS, DEPLOY_MIGRATIONS)


def register_stage_migrations() -> None:
    """Make every stage's branch known to this process's upgrades (a shared store holds all their heads)."""
    migrations.register(*STAGE_MIGRATIONS)


def open_shared_store(url: str) -> Engine:
    """The engine for the loop's shared store, migrated to every stage's newest schema."""
    from alignloop.core.db import open_store

    return open_store(url, branches=STAGE_MIGRATIONS)
