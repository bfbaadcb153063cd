"""Snapshots from the store: what curation's replay saved comes back through its query API, same as its files."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest


@pytest.fixture(scope="module")
def replayed():
    from curation.replay import run_replay
    from curation.settings import Policy
    from support.stream.generate import generate

    lines, _truth, _meta = generate(seed=3, scale=0.04)
    return run_replay(lines, Policy())


def test_store_and_files_give_the_same_snapshot(store_engine, replayed):
    from alignloop.core.db import session_scope
    from curation.store import save_window
    from retrain.snapshot import SnapshotPolicy, build_snapshot, load_snapshot_inputs

    with session_scope(store_engine) as session:
        for w in replayed.windows:
            save_window(session, w)
    with session_scope(store_engine) as session:
        pairs, unpaired = load_snapshot_inputs(session)
    assert len(pairs) == len(replayed.pairs) > 10 and len(unpaired) == len(replayed.unpaired)
    policy = SnapshotPolicy(min_train_pairs=5, min_heldout_pairs=1)
    from_store = build_snapshot(pairs, unpaired, policy)
    from_files = build_snapshot(replayed.pairs, replayed.unpaired, policy)
    assert from_store.hash == from_files.hash
    assert set(from_store.event_ids) <= {e for r in replayed.pairs + replayed.unpaired for e in r["event_ids"]}

    # a time window reads less through the query and the same through the policy
    times = sorted(datetime.fromisoformat(p["created_at"]) for p in replayed.pairs)
    mid = times[len(times) // 2]
    mid = mid if mid.tzinfo else mid.replace(tzinfo=UTC)
    with session_scope(store_engine) as session:
        later, _ = load_snapshot_inputs(session, since=mid)
    assert 0 < len(later) < len(pairs)
