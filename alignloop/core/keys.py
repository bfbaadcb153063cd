"""Local secrets: random keys created once under `$ALIGNLOOP_HOME/secrets/` (mode 0600) and read by every process."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from alignloop.core.errors import AlignloopError


def secret_path(home: Path, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise AlignloopError(f"a secret's name must be a plain file name; got {name!r}")
    return Path(home) / "secrets" / name


def read_secret(home: Path, name: str) -> str | None:
    """The secret `name` when it exists and is not empty, else None (clients read; only `stack up` creates)."""
    try:
        return secret_path(home, name).read_text().strip() or None
    except OSError:
        return None


def load_or_create_secret(home: Path, name: str, *, nbytes: int = 32) -> str:
    """The secret `name` (hex), created once with O_EXCL so processes starting together agree on one value."""
    path = secret_path(home, name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(nbytes))
    value = path.read_text().strip()
    if not value:  # a reader raced the writer between create and write
        import time

        for _ in range(50):
            time.sleep(0.02)
            value = path.read_text().strip()
            if value:
                break
    if not value:
        raise AlignloopError(f"secret file {str(path)!r} is empty; delete it to have a new one made")
    return value
