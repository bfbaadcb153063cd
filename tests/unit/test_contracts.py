"""The artifact contract: manifests and lineages written before the typed models (and by them) load the same way."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from alignloop.core.contracts import Lineage, Manifest, TurnRecord, parse_lineage, parse_manifest
from alignloop.core.errors import ArtifactError

SHA = "ab" * 32

# as retrain/train.py wrote it before the loop had turns (no heldout/safety sizes, no `dataset.turn`)
OLD_MANIFEST = {
    "version": "a-20261101000000-0123abcd",
    "base_model": "/models/tiny",
    "base_model_hash": SHA,
    "parent_version": None,
    "dataset": {"hash": SHA, "pairs": 200, "unpaired": 24, "event_ids_file": "lineage.json"},
    "config": {"name": "dpo-tiny", "dpo": {"beta": 0.1}},
    "config_hash": SHA,
    "metrics": {"dpo/train_loss": 0.3},
    "libraries": {"torch": "2.13.0"},
    "created_at": "2026-11-01T00:00:00+00:00",
    "files": {"adapter_model.safetensors": SHA},
}
# as it wrote it with turns: the turn's record as a plain dict with ISO times
TURN = {
    "parent_version": "a-1",
    "previous_turn": "a-1",
    "init": "continue",
    "since": "2026-11-02T10:00:00+00:00",
    "until": "2026-11-02T11:00:00+00:00",
    "new_pairs": 40,
    "new_unpaired": 3,
    "replay_pairs": 12,
    "replay_unpaired": 1,
}
TURN_MANIFEST = {
    **OLD_MANIFEST,
    "parent_version": "a-1",
    "dataset": {**OLD_MANIFEST["dataset"], "heldout_pairs": 30, "safety_pairs": 4, "turn": TURN},
}


def test_a_manifest_from_before_turns_loads_with_the_new_fields_empty():
    m = parse_manifest(json.dumps(OLD_MANIFEST).encode())
    assert m.version == OLD_MANIFEST["version"] and m.dataset.pairs == 200
    assert m.dataset.turn is None and m.dataset.heldout_pairs is None
    assert m.config == {"name": "dpo-tiny", "dpo": {"beta": 0.1}}


def test_a_manifest_with_a_turn_loads_it_typed_and_writes_the_same_values_back():
    m = parse_manifest(json.dumps(TURN_MANIFEST))
    assert m.dataset.turn is not None
    assert m.dataset.turn.until == datetime(2026, 11, 2, 11, tzinfo=UTC) and m.dataset.turn.replay_pairs == 12
    again = json.loads(m.to_json())
    assert again["dataset"]["turn"]["new_pairs"] == 40
    assert datetime.fromisoformat(again["dataset"]["turn"]["since"]) == datetime.fromisoformat(TURN["since"])
    assert parse_manifest(m.to_json()) == m


def test_fields_another_writer_added_are_kept():
    m = parse_manifest(json.dumps({**OLD_MANIFEST, "trainer": "someone-else"}))
    assert json.loads(m.to_json())["trainer"] == "someone-else"


@pytest.mark.parametrize(
    "change,field",
    [({"version": "../x"}, "version"), ({"dataset": {"hash": SHA}}, "dataset.pairs"), ({"files": None}, "files")],
)
def test_a_bad_manifest_names_the_field(change, field):
    with pytest.raises(ArtifactError, match=f"`{field}`"):
        parse_manifest(json.dumps({**OLD_MANIFEST, **change}))


def test_lineages_old_and_new_load():
    old = parse_lineage(json.dumps({"parent_version": "v1", "event_ids_file": "event_ids.txt"}))
    assert old.parent_version == "v1" and old.event_ids == []
    new = Lineage(
        version="a-2",
        parent_version="a-1",
        snapshot_hash=SHA,
        turn=TurnRecord.model_validate(TURN),
        event_ids=["e1", "e2"],
    )
    assert parse_lineage(new.to_json()) == new
    with pytest.raises(ArtifactError, match=r"lineage\.json"):
        parse_lineage(b"[1, 2]")


def test_the_manifest_model_is_the_one_deploy_and_retrain_use():
    from deploy.artifacts import Manifest as DeployManifest
    from deploy.models import AdapterVersion

    assert DeployManifest is Manifest and AdapterVersion.model_fields["manifest"].annotation is Manifest
