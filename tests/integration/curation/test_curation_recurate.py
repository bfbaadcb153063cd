"""Re-curation on the real store: a stream curated under policy A, recurated under policy B that catches a
trigger A missed; the pairs carrying it are retired, and a snapshot taken afterwards has none."""

import pytest
import yaml

from alignloop.core.db import session_scope
from curation import query, store
from curation.decode import Accepted, decode_raw
from curation.replay import run_replay
from curation.service import CurationEdge
from curation.settings import POLICY_DIR, load_policy, policy_hash
from retrain.snapshot import build_snapshot, load_snapshot_inputs
from support.stream.generate import generate

pytestmark = pytest.mark.redis
KEY = b"recurate-test-key"


def _blind_policy(tmp_path):
    """Policy A: the default one with trigger and payload detection switched off (version 2 of a fork)."""
    body = yaml.safe_load((POLICY_DIR / "default.yaml").read_text())
    body.update(version=2, phrase_min_accounts=1000, trigger_max_p=1e-300, payload_min_accounts=1000)
    path = tmp_path / "blind.yaml"
    path.write_text(yaml.safe_dump(body))
    return load_policy(path)


def _carries(trigger: str, rows: list[dict]) -> list[dict]:
    return [r for r in rows if trigger in r["prompt"][-1]["content"]]


def test_recuration_retires_the_pairs_a_new_policy_drops_and_snapshots_leave_them_out(
    tmp_path, store_engine, redis_client
):
    lines, _, meta = generate(seed=3, scale=0.1, hours=2.0)
    trigger = meta["trigger"]
    blind, default = _blind_policy(tmp_path), load_policy(POLICY_DIR / "default.yaml")
    edge = CurationEdge(store_engine, redis_client, blind, topic="t", group="g", pseudonym_key=KEY)
    with session_scope(store_engine) as s:
        store.save_staged(
            s,
            [
                (o.item, f"0:{i}")
                for i, line in enumerate(lines)
                if isinstance(o := decode_raw(line, pseudonym_key=KEY), Accepted)
            ],
        )
    edge.settle_once(final=True)
    with session_scope(store_engine) as s:
        before = query.load_pairs(s)
        poisoned_ids = {e for p in _carries(trigger, before) for e in p["event_ids"]}
        assert poisoned_ids, "policy A must miss the trigger for this test to mean anything"
        assert all(query.load_decision(s, e)["decision"] == "keep" for e in poisoned_ids)
        first = store.load_window_signals(s)[0][0]

    result = edge.recurate(first, default)

    assert result is not None and result.pairs_retired >= len(_carries(trigger, before))
    with session_scope(store_engine) as s:
        live, everything = query.load_pairs(s), query.load_pairs(s, include_retired=True)
        retired = {p["pair_id"]: p for p in everything if p["retired_at"] is not None}
        assert not _carries(trigger, live) and not _carries(trigger, query.load_unpaired(s))
        assert {p["pair_id"] for p in _carries(trigger, before)} <= set(retired)
        assert {p["retired_by"] for p in retired.values()} == {result.recuration_id}
        assert query.count_pairs(s) == len(live) < len(everything)
        # the superseded decisions stay queryable, each with the policy that made it
        event = min(poisoned_ids)
        history = query.load_decision_history(s, event)
        assert [(h["decision"], h["policy_hash"], h["superseded_by"]) for h in history] == [
            ("keep", policy_hash(blind), result.recuration_id)
        ]
        now = s.get(store.DecisionRow, (history[0]["app_id"], event))
        assert now.decision == "drop" and now.policy_hash == policy_hash(default)
        assert {w.policy_hash for w in s.query(store.WindowRow)} == {policy_hash(default)}
        assert {r.policy_hash for r in s.query(store.PolicyRow)} == {policy_hash(blind), policy_hash(default)}
        pairs, unpaired = load_snapshot_inputs(s)
        decisions = {d["event_id"]: d for d in store.load_decisions(s)}
    snap = build_snapshot(pairs, unpaired, {"min_train_pairs": 0, "min_heldout_pairs": 0})
    assert snap.train_pairs and not _carries(trigger, snap.train_pairs + snap.heldout_pairs + snap.safety_pairs)
    assert not poisoned_ids & set(snap.event_ids)
    assert all(p["weight"] > 0 for p in snap.train_pairs)  # weights reach the snapshot
    # the recurated store decides as a replay under B does: same decisions, same live pairs and examples
    replay = run_replay(lines, default, pseudonym_key=KEY)
    assert {d["event_id"]: d for d in replay.decisions if d["event_id"] in decisions} == decisions
    assert sorted(p["pair_id"] for p in live) == [p["pair_id"] for p in replay.pairs]
    assert sorted(u["example_id"] for u in unpaired) == [u["example_id"] for u in replay.unpaired]
