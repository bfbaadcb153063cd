"""Adapter artifacts in deploy: the contract's checks (alignloop.core.contracts) with deploy's errors; local storage."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from alignloop.core import contracts
from alignloop.core import errors as contract_errors
from alignloop.core.contracts import (
    ADAPTER_CONFIG,
    LINEAGE,
    MANIFEST,
    WEIGHTS,
    LoadedArtifact,
    Manifest,
    sha256_hex,
)
from deploy.errors import ArtifactError, DeployError, IntegrityError

__all__ = [
    "ADAPTER_CONFIG",
    "LINEAGE",
    "MANIFEST",
    "WEIGHTS",
    "ArtifactStorage",
    "LoadedArtifact",
    "LocalArtifactStorage",
    "Manifest",
    "check_relative_name",
    "load_artifact_dir",
    "sha256_hex",
]


@contextmanager
def _as_deploy_errors() -> Iterator[None]:
    """The contract's errors, raised again as deploy's (the boundary translates; serving maps DeployError)."""
    try:
        yield
    except DeployError:
        raise
    except contract_errors.IntegrityError as exc:
        raise IntegrityError(str(exc)) from exc
    except contract_errors.ArtifactError as exc:
        raise ArtifactError(str(exc)) from exc


def check_relative_name(name: str) -> str:
    with _as_deploy_errors():
        return contracts.check_relative_name(name)


def load_artifact_dir(path: str | os.PathLike[str], *, expected_manifest_sha256: str | None = None) -> LoadedArtifact:
    """Read a whole artifact directory into memory and verify it (alignloop.core.contracts.verify_artifact)."""
    with _as_deploy_errors():
        return contracts.load_artifact_dir(path, expected_manifest_sha256=expected_manifest_sha256)


class ArtifactStorage(Protocol):
    """Where registered artifacts live; local directory now, an object store can implement the same later."""

    def save(self, artifact: LoadedArtifact, manifest_bytes: bytes) -> str: ...

    def load(self, location: str, *, manifest_sha256: str) -> LoadedArtifact: ...


class LocalArtifactStorage:
    """Artifacts as directories `<root>/<version>/`; every path is confined to the root."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()

    def _confined(self, location: str) -> Path:
        check_relative_name(location)
        p = (self.root / location).resolve()
        if p == self.root or not p.is_relative_to(self.root):
            raise ArtifactError(f"artifact location {location!r} escapes the artifact root {str(self.root)!r}")
        return p

    def save(self, artifact: LoadedArtifact, manifest_bytes: bytes) -> str:
        """Write the verified bytes under the version's name, atomically (temp dir, then rename)."""
        location = artifact.manifest.version
        target = self._confined(location)
        if target.exists():
            existing = self.load(location, manifest_sha256=artifact.manifest_sha256)
            if existing.files != artifact.files:
                raise ArtifactError(f"artifact root already holds a different {location!r}")
            return location
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{location}.{uuid.uuid4().hex[:6]}.", dir=self.root))
        try:
            for name, data in {**artifact.files, MANIFEST: manifest_bytes}.items():
                dest = (tmp / name).resolve()
                if not dest.is_relative_to(tmp.resolve()):
                    raise ArtifactError(f"file {name!r} escapes the artifact directory")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return location

    def load(self, location: str, *, manifest_sha256: str) -> LoadedArtifact:
        return load_artifact_dir(self._confined(location), expected_manifest_sha256=manifest_sha256)

    def path_of(self, location: str) -> Path:
        return self._confined(location)
