"""The core's Alembic branch and the registry of package branches that every upgrade in this process passes.

Each package keeps its own branch in `<package>/migrations/` and exposes the folder as `FOLDER`; whoever
opens a store registers the folders it knows. A store shared by several packages holds all their heads and
Alembic refuses heads it cannot find, so the processes that open the shared store (the composition and the
flows) register every package's folder: `flows.store.STAGE_MIGRATIONS`.
"""

from __future__ import annotations

from pathlib import Path

from alignloop.core.errors import StoreError

FOLDER = Path(__file__).parent
VERSIONS = FOLDER / "versions"
_registered: list[Path] = []


def register(*folders: Path) -> None:
    """Add package branches (their migrations folders) to every later upgrade in this process; repeats are no-ops."""
    for folder in folders:
        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise StoreError(f"register: a migrations folder must be a directory; got {folder}")
        if folder not in _registered:
            _registered.append(folder)


def version_locations() -> list[Path]:
    """The core's versions and every registered package branch, in registration order."""
    return [VERSIONS, *_registered]
