"""The adapter artifact contract shared by retrain (writes it) and deploy (registers and serves it): the manifest
and lineage models, the one `verify_artifact` (every file listed with its sha256, safe formats only), and reading
an artifact directory into memory.

The JSON on disk is the same as before these models existed: every field added since is optional, so a manifest
or lineage written by an older alignloop still loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alignloop.core.errors import ArtifactError, IntegrityError

MANIFEST = "manifest.json"
WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
LINEAGE = "lineage.json"
REQUIRED = (WEIGHTS, ADAPTER_CONFIG, MANIFEST, LINEAGE)
# formats that can run code when loaded (pickle and the zip archives of torch.save), refused by name and by bytes
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".dill"}
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class TurnRecord(BaseModel):
    """What one turn of the loop trained on: its parent, its data window and how much was new or replayed."""

    model_config = ConfigDict(extra="allow", frozen=True)

    parent_version: str | None = None
    previous_turn: str | None = None
    init: str | None = None  # "continue" or "fresh"
    since: datetime | None = None
    until: datetime | None = None  # exclusive: the next turn's data starts here
    new_pairs: int = Field(default=0, ge=0)
    new_unpaired: int = Field(default=0, ge=0)
    replay_pairs: int = Field(default=0, ge=0)
    replay_unpaired: int = Field(default=0, ge=0)


class DatasetRef(BaseModel):
    """The data an adapter was trained on: the snapshot hash, its sizes, where its event ids are listed."""

    model_config = ConfigDict(extra="allow", frozen=True)

    hash: str
    pairs: int = Field(ge=0)
    unpaired: int = Field(ge=0)
    event_ids_file: str | None = None
    heldout_pairs: int | None = Field(default=None, ge=0)
    safety_pairs: int | None = Field(default=None, ge=0)
    turn: TurnRecord | None = None  # absent on adapters made before the loop had turns


class Manifest(BaseModel):
    """What retrain writes beside an adapter; `files` maps every other file to its sha256."""

    model_config = ConfigDict(extra="allow", frozen=True)

    version: str = Field(pattern=VERSION_RE.pattern)
    base_model: str = Field(min_length=1)
    base_model_hash: str
    parent_version: str | None = None
    dataset: DatasetRef
    config: dict[str, Any] | None = None  # the run config itself; `config_hash` is what identifies it
    config_hash: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    libraries: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    files: dict[str, str]

    def to_json(self) -> str:
        """The manifest as written to disk (sorted keys, so the same manifest is the same bytes)."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


class Lineage(BaseModel):
    """`lineage.json`: the events an adapter was trained on, so every adapter can name them."""

    model_config = ConfigDict(extra="allow", frozen=True)

    version: str | None = None
    parent_version: str | None = None
    snapshot_hash: str | None = None
    turn: TurnRecord | None = None
    event_ids: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1)


@dataclass(frozen=True)
class LoadedArtifact:
    """An artifact read into memory and verified: use these bytes, never re-read the files (no check-then-use gap)."""

    manifest: Manifest
    manifest_sha256: str
    files: dict[str, bytes]  # every file but the manifest, by relative posix name

    @property
    def total_bytes(self) -> int:
        return sum(len(b) for b in self.files.values())

    @property
    def lineage(self) -> Lineage:
        return parse_lineage(self.files[LINEAGE])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(directory: Path) -> dict[str, str]:
    """`files` for a manifest: every file under `directory` but the manifest, by posix relative name."""
    return {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def _first_error(exc: ValidationError, what: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or what
    return f"{what} `{where}`: {first['msg']}; got {first.get('input')!r}"[:400]


def parse_manifest(data: bytes | str) -> Manifest:
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise ArtifactError(_first_error(exc, MANIFEST)) from exc


def parse_lineage(data: bytes | str) -> Lineage:
    try:
        return Lineage.model_validate_json(data)
    except ValidationError as exc:
        raise ArtifactError(_first_error(exc, LINEAGE)) from exc


def check_relative_name(name: str) -> str:
    """A file name inside an artifact: relative, posix, no `..`, no empty parts."""
    p = PurePosixPath(name)
    if not name or "\\" in name or p.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise ArtifactError(f"manifest `files` key must be a relative path inside the artifact; got {name!r}")
    return str(p)


def check_safe_format(name: str, data: bytes) -> None:
    """Refuse pickles and torch.save archives, by suffix and by their first bytes."""
    if PurePosixPath(name).suffix.lower() in PICKLE_SUFFIXES:
        raise ArtifactError(f"file {name!r} is a pickle-capable format; only safetensors weights are accepted")
    if (len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5) or data.startswith(b"PK\x03\x04"):
        raise ArtifactError(f"file {name!r} looks like a pickle or zip archive; only safetensors weights are accepted")


def check_safetensors(data: bytes, name: str = WEIGHTS) -> None:
    """The header of a safetensors file parses and its tensors lie inside the file."""
    if len(data) < 8:
        raise ArtifactError(f"{name}: not a safetensors file (only {len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ArtifactError(f"{name}: not a safetensors file (header length {n} for {len(data)} bytes)")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as exc:
        raise ArtifactError(f"{name}: safetensors header is not JSON ({exc})") from exc
    body = len(data) - 8 - n
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        start, end = meta.get("data_offsets", (None, None)) if isinstance(meta, dict) else (None, None)
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= body):
            raise ArtifactError(f"{name}: tensor {key!r} has data_offsets {meta!r} outside the file")


def _check_listing(manifest: Manifest, files: dict[str, bytes]) -> dict[str, str]:
    """The manifest's `files` and the artifact's files are the same set, with the required ones present."""
    listed = {check_relative_name(k): v for k, v in manifest.files.items()}
    if MANIFEST in listed:
        raise ArtifactError("manifest `files` must not list manifest.json itself")
    for name in REQUIRED:
        if name != MANIFEST and name not in files:
            raise ArtifactError(f"artifact lacks required file {name!r}")
    extra = sorted(set(files) - set(listed))
    if extra:
        raise ArtifactError(f"file {extra[0]!r} is in the artifact but not in manifest `files` (unverifiable)")
    missing = sorted(set(listed) - set(files))
    if missing:
        raise ArtifactError(f"manifest `files` lists {missing[0]!r} but the artifact has no such file")
    return listed


def verify_artifact(manifest: Manifest, files: dict[str, bytes]) -> None:
    """Every file is listed with its sha256, every listed file is there, and the adapter itself is safe to load."""
    listed = _check_listing(manifest, files)
    for name, data in files.items():
        check_safe_format(name, data)
        want = listed[name]
        if not SHA256_RE.match(want):
            raise ArtifactError(f"manifest `files.{name}` must be a lowercase sha256 hex digest; got {want!r}")
        got = sha256_hex(data)
        if got != want:
            raise IntegrityError(f"sha256 mismatch for {name!r}: manifest says {want[:16]}..., file has {got[:16]}...")
    check_safetensors(files[WEIGHTS])
    try:
        cfg = json.loads(files[ADAPTER_CONFIG])
    except ValueError as exc:
        raise ArtifactError(f"adapter_config.json is not JSON ({exc})") from exc
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise ArtifactError(f'adapter_config.json `peft_type` must be "LORA"; got {cfg.get("peft_type")!r}')
    ds_file = manifest.dataset.event_ids_file
    if ds_file is not None and check_relative_name(ds_file) not in files:
        raise ArtifactError(f"manifest `dataset.event_ids_file` names {ds_file!r}, which is not in the artifact")
    parse_lineage(files[LINEAGE])


def _read_tree(root: Path) -> dict[str, bytes]:
    """Every regular file under `root` by posix relative name; links and specials are refused."""
    if not root.is_dir():
        raise ArtifactError(f"artifact directory {str(root)!r} does not exist or is not a directory")
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise ArtifactError(f"artifact contains a symlink {d!r}; links could point outside the artifact")
        for f in filenames:
            p = Path(dirpath) / f
            rel = p.relative_to(root).as_posix()
            if p.is_symlink() or not p.is_file():
                raise ArtifactError(f"artifact file {rel!r} is a link or not a regular file")
            out[rel] = p.read_bytes()
    return out


def load_artifact_dir(path: str | os.PathLike[str], *, expected_manifest_sha256: str | None = None) -> LoadedArtifact:
    """Read a whole artifact directory into memory and verify it (files, hashes, formats)."""
    root = Path(path)
    files = _read_tree(root)
    if MANIFEST not in files:
        raise ArtifactError(f"artifact {str(root)!r} has no manifest.json")
    manifest_bytes = files.pop(MANIFEST)
    manifest_sha = sha256_hex(manifest_bytes)
    if expected_manifest_sha256 is not None and manifest_sha != expected_manifest_sha256:
        raise IntegrityError(
            f"sha256 mismatch for 'manifest.json' of {root.name!r}: registered "
            f"{expected_manifest_sha256[:16]}..., file has {manifest_sha[:16]}..."
        )
    manifest = parse_manifest(manifest_bytes)
    verify_artifact(manifest, files)
    return LoadedArtifact(manifest=manifest, manifest_sha256=manifest_sha, files=files)
