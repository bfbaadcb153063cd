"""Snapshots: deterministic, content-hashed, split by prompt cluster, capped, with clear minimum-size errors."""

import copy
import random
import re

import pytest

from retrain.corpus import chat, make_pairs, make_unpaired
from retrain.errors import SnapshotError
from retrain.snapshot import (
    SnapshotPolicy,
    build_snapshot,
    load_records_jsonl,
    load_snapshot,
    normalize_prompt,
    save_snapshot,
)

POLICY = SnapshotPolicy(min_train_pairs=4, min_heldout_pairs=1, heldout_fraction=0.3)


def _prompts(part):
    return {normalize_prompt(r["prompt"]) for r in part}


def test_same_input_in_any_order_gives_the_same_snapshot_and_hash():
    pairs, unp = make_pairs(200), make_unpaired(30)
    a = build_snapshot(pairs, unp, POLICY)
    shuffled = copy.deepcopy(pairs)
    random.Random(1).shuffle(shuffled)
    b = build_snapshot(shuffled, list(reversed(unp)), POLICY)
    assert a.hash == b.hash and a.train_pairs == b.train_pairs and a.heldout_pairs == b.heldout_pairs
    assert build_snapshot(pairs[:-1], unp, POLICY).hash != a.hash
    assert build_snapshot(pairs, unp, POLICY.model_copy(update={"split_salt": "x"})).hash != a.hash


def test_no_prompt_or_near_identical_prompt_lands_on_both_sides():
    snap = build_snapshot(make_pairs(300), [], POLICY)
    assert snap.heldout_pairs and snap.train_pairs
    assert not _prompts(snap.train_pairs) & _prompts(snap.heldout_pairs)
    train_clusters = {r["cluster"] for r in snap.train_pairs}
    assert not train_clusters & {r["cluster"] for r in snap.heldout_pairs}
    # "Hi. X" and "X" are one cluster, so they share a side
    for r in snap.heldout_pairs:
        assert normalize_prompt(r["prompt"]).removeprefix("hi ") not in _prompts(snap.train_pairs)


def test_caps_per_prompt_and_per_cluster_keep_the_heaviest():
    base = make_pairs(1)[0]
    many = []
    for i in range(20):
        r = copy.deepcopy(base)
        r["chosen"][0]["content"] += f" v{i}"
        r["weight"] = float(i)
        r["event_ids"] = [f"e{i}"]
        many.append(r)
    other = make_pairs(40, seed=2)[20:]
    snap = build_snapshot(many + other, [], SnapshotPolicy(max_per_prompt=3, min_train_pairs=0, min_heldout_pairs=0))
    kept = [r for r in snap.train_pairs + snap.heldout_pairs if r["prompt"] == base["prompt"]]
    assert sorted(r["weight"] for r in kept) == [17.0, 18.0, 19.0]
    near = [copy.deepcopy(base) for _ in range(10)]
    for i, r in enumerate(near):
        r["prompt"] = chat(f"My order {1000 + i} has not arrived yet.")
    snap = build_snapshot(near, [], SnapshotPolicy(max_per_cluster=2, min_train_pairs=0, min_heldout_pairs=0))
    assert len(snap.train_pairs) + len(snap.heldout_pairs) == 2
    assert snap.stats["capped"]["per_cluster"] == 8


def test_duplicates_merge_lineage_and_identical_sides_are_dropped():
    (p,) = make_pairs(1)
    dup = copy.deepcopy(p)
    dup["event_ids"] = ["other"]
    same = copy.deepcopy(p)
    same["rejected"] = same["chosen"]
    snap = build_snapshot([p, dup, same], [], SnapshotPolicy(min_train_pairs=0, min_heldout_pairs=0))
    (kept,) = snap.train_pairs + snap.heldout_pairs
    assert kept["event_ids"] == sorted(["other", p["event_ids"][0]])


def test_safety_pairs_are_their_own_heldout_slice():
    pairs = make_pairs(200) + make_pairs(200, seed=5, dimension="safety")
    snap = build_snapshot(pairs, [], POLICY)
    assert snap.safety_pairs and all(r["dimension"] == "safety" for r in snap.safety_pairs)
    assert all(r["dimension"] == "helpfulness" for r in snap.heldout_pairs)


def test_time_window_and_min_weight_filter():
    pairs = make_pairs(60)
    pairs[0]["weight"] = 0.0
    snap = build_snapshot(
        pairs, [], SnapshotPolicy(min_train_pairs=0, min_heldout_pairs=0, since="2026-11-01T00:00:30+00:00")
    )
    assert snap.stats["after_window_and_weight"]["pairs"] == 30
    snap = build_snapshot(pairs, [], SnapshotPolicy(min_train_pairs=0, min_heldout_pairs=0, min_weight=0.5))
    assert snap.stats["after_window_and_weight"]["pairs"] == 59


def test_too_small_a_snapshot_raises_a_clear_error():
    with pytest.raises(SnapshotError, match="min_train_pairs"):
        build_snapshot(make_pairs(5), [], SnapshotPolicy(min_train_pairs=50))
    with pytest.raises(SnapshotError, match="min_heldout_pairs"):
        build_snapshot(make_pairs(50), [], SnapshotPolicy(heldout_fraction=0.0, min_train_pairs=0))


def test_bad_records_name_the_field():
    with pytest.raises(SnapshotError, match="`chosen` is required"):
        build_snapshot([{"prompt": "hi", "rejected": "x"}], [], POLICY)
    with pytest.raises(SnapshotError, match="`label` must be true or false"):
        build_snapshot([], [{"prompt": "hi", "completion": "x", "label": "yes"}], POLICY)
    with pytest.raises(SnapshotError, match="`dimension`"):
        build_snapshot([{**make_pairs(1)[0], "dimension": "style"}], [], POLICY)


def test_save_and_load_round_trip_in_trl_format(tmp_path):
    snap = build_snapshot(make_pairs(100), make_unpaired(20), POLICY)
    out = save_snapshot(snap, tmp_path / "snap")
    back = load_snapshot(out)
    assert back.hash == snap.hash and back.train_pairs == snap.train_pairs
    assert back.event_ids == snap.event_ids
    first = load_records_jsonl(out / "train.jsonl")[0]
    assert {"prompt", "chosen", "rejected", "weight", "event_ids"} <= set(first)
    with pytest.raises(SnapshotError, match="must not exist"):
        save_snapshot(snap, out)
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n')
    with pytest.raises(SnapshotError, match=re.escape("bad.jsonl:2")):
        load_records_jsonl(tmp_path / "bad.jsonl")
