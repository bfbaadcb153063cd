"""Artifact checks: manifest contract, sha256 of every file, safetensors only, paths confined to the root."""

from __future__ import annotations

import json
import os
import pickle
import re

import pytest

from alignloop.core import errors as contract_errors
from alignloop.core.contracts import check_safetensors
from deploy.artifacts import LocalArtifactStorage, check_relative_name, load_artifact_dir
from deploy.errors import ArtifactError, IntegrityError
from support.models import write_fake_artifact, write_manifest


@pytest.fixture
def artifact(tmp_path):
    return write_fake_artifact(tmp_path / "v1", "v1", seed=1)


def _rewrite_manifest(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


def test_a_good_artifact_loads_with_every_file_verified(artifact):
    art = load_artifact_dir(artifact)
    assert art.manifest.version == "v1"
    assert set(art.files) == {"adapter_model.safetensors", "adapter_config.json", "lineage.json", "event_ids.txt"}
    assert len(art.manifest_sha256) == 64


def test_a_changed_byte_is_a_hash_mismatch_naming_the_file(artifact):
    p = artifact / "adapter_model.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=re.escape("sha256 mismatch for 'adapter_model.safetensors'")):
        load_artifact_dir(artifact)


def test_the_manifest_itself_is_checked_against_the_registered_hash(artifact):
    art = load_artifact_dir(artifact)
    _rewrite_manifest(artifact, metrics={"pref_accuracy": 0.99})
    with pytest.raises(IntegrityError, match=re.escape("manifest.json")):
        load_artifact_dir(artifact, expected_manifest_sha256=art.manifest_sha256)


def test_an_unlisted_file_is_refused(artifact):
    (artifact / "notes.txt").write_text("hi")
    with pytest.raises(ArtifactError, match=re.escape("'notes.txt' is in the artifact but not in manifest")):
        load_artifact_dir(artifact)


def test_a_listed_but_missing_file_is_refused(artifact):
    (artifact / "event_ids.txt").unlink()
    with pytest.raises(ArtifactError, match=re.escape("event_ids.txt")):
        load_artifact_dir(artifact)


@pytest.mark.parametrize("name", ["adapter_model.bin", "extra/weights.pt", "x.pkl"])
def test_pickle_formats_are_refused_by_name(artifact, name):
    (artifact / name).parent.mkdir(parents=True, exist_ok=True)
    (artifact / name).write_bytes(b"not really")
    write_manifest(artifact, version="v1", base_model="tiny-base", base_hash="0" * 64, parent=None)
    with pytest.raises(ArtifactError, match="pickle-capable format"):
        load_artifact_dir(artifact)


def test_pickle_bytes_are_refused_whatever_the_name(artifact):
    (artifact / "data.json").write_bytes(pickle.dumps({"a": 1}))
    write_manifest(artifact, version="v1", base_model="tiny-base", base_hash="0" * 64, parent=None)
    with pytest.raises(ArtifactError, match="looks like a pickle"):
        load_artifact_dir(artifact)


def test_weights_that_are_not_safetensors_are_refused(artifact):
    (artifact / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx")
    write_manifest(artifact, version="v1", base_model="tiny-base", base_hash="0" * 64, parent=None)
    with pytest.raises(ArtifactError, match="safetensors header is not JSON"):
        load_artifact_dir(artifact)


def test_safetensors_offsets_outside_the_file_are_refused():
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1600]}}).encode()
    with pytest.raises(contract_errors.ArtifactError, match="outside the file"):
        check_safetensors(len(header).to_bytes(8, "little") + header + b"\0" * 16)


def test_a_symlink_is_refused(artifact, tmp_path):
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", artifact / "link.txt")
    with pytest.raises(ArtifactError, match="link"):
        load_artifact_dir(artifact)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "", "a\\b", "./a"])
def test_names_must_stay_inside(name):
    with pytest.raises(ArtifactError, match="relative path inside the artifact"):
        check_relative_name(name)


def test_manifest_fields_are_validated_with_the_field_named(artifact):
    _rewrite_manifest(artifact, version="../escape")
    with pytest.raises(ArtifactError, match="`version`"):
        load_artifact_dir(artifact)


def test_manifest_must_not_list_unknown_hash_format(artifact):
    m = json.loads((artifact / "manifest.json").read_text())
    m["files"]["lineage.json"] = "ABC"
    (artifact / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="lowercase sha256"):
        load_artifact_dir(artifact)


def test_adapter_config_must_be_lora(artifact):
    (artifact / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    write_manifest(artifact, version="v1", base_model="tiny-base", base_hash="0" * 64, parent=None)
    with pytest.raises(ArtifactError, match="peft_type"):
        load_artifact_dir(artifact)


def test_storage_copies_verified_bytes_and_confines_locations(artifact, tmp_path):
    storage = LocalArtifactStorage(tmp_path / "root")
    art = load_artifact_dir(artifact)
    loc = storage.save(art, (artifact / "manifest.json").read_bytes())
    assert loc == "v1"
    again = storage.load(loc, manifest_sha256=art.manifest_sha256)
    assert again.files == art.files
    assert storage.save(art, (artifact / "manifest.json").read_bytes()) == "v1"  # same bytes: idempotent
    for bad in ("../v1", "/tmp", "v1/../../x"):
        with pytest.raises(ArtifactError):
            storage.load(bad, manifest_sha256=art.manifest_sha256)
