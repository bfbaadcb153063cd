"""Curation's Alembic branch: its revisions live in this folder, registered by whoever opens the store."""

from pathlib import Path

FOLDER = Path(__file__).parent
