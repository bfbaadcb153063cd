"""Three turns of the loop back to back on the real parts: curated store, TRL/PEFT training, the registry.

Turn 1 learns the courteous style from the base and is promoted; turn 2, trained while turn 1 is active on
users who suddenly prefer curt answers, is stopped by the gate ("no worse than what serves now"); turn 3,
trained on new courteous feedback, continues from turn 1 and is promoted over it. Rollback then lands on
turn 1, not on the base.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from alignloop.core.contracts import TurnRecord

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def _turn(base_model, loop_env, small_run) -> dict:
    from flows.loop import retrain_flow

    return retrain_flow(
        base_model=base_model,
        train_config=str(small_run),
        store_url=loop_env["store_url"],
        redis_url=loop_env["redis_url"],
    )


def _promote(loop_env, version: str) -> None:
    from alignloop.core.db import session_scope
    from deploy import registry

    with session_scope(loop_env["engine"]) as session:
        registry.promote(session, version, actor="test-mlops", reason="canary looked good")


def test_three_turns_from_base_through_a_rejected_turn_to_a_promoted_successor(
    prefect_harness, base_model, loop_env, make_events, curate_events, small_run
):
    from alignloop.core.db import session_scope
    from deploy import registry

    now = datetime.now(UTC)
    engine = loop_env["engine"]

    # turn 1: courteous feedback on the base
    curate_events(engine, make_events(240, preferred="courteous", seed=11, start=now - timedelta(hours=9)))
    t1 = _turn(base_model, loop_env, small_run)
    assert t1["status"] == "canary", t1.get("gate")
    assert t1["parent"] is None and t1["turn"]["init"] == "fresh" and t1["turn"]["since"] is None
    assert t1["turn"]["replay_pairs"] == 0 and t1["turn"]["new_pairs"] > 100
    # a canary is live: another turn now must not start a second one
    skipped = _turn(base_model, loop_env, small_run)
    assert skipped["status"] == "skipped" and "canary" in skipped["reason"]
    _promote(loop_env, t1["version"])
    # nothing new since turn 1: the next turn has nothing to learn
    idle = _turn(base_model, loop_env, small_run)
    assert idle["status"] == "skipped" and "no curated data" in idle["reason"]

    # turn 2: the users flip to curt answers; trained on top of turn 1, it must not pass as "no worse"
    curate_events(engine, make_events(240, preferred="curt", seed=12, start=now - timedelta(hours=6)))
    t2 = _turn(base_model, loop_env, small_run)
    assert t2["parent"] == t1["version"] and t2["turn"]["init"] == "continue"
    assert t2["turn"]["since"] == t1["turn"]["until"]  # only what came after turn 1's data is new
    assert t2["turn"]["replay_pairs"] > 0  # turn 1's own pairs are replayed
    assert t2["status"] == "gate_failed", t2["report"]["comparisons"]
    assert t2["gate"]["failures"]

    # turn 3: courteous feedback again, after the rejected turn; gated and canaried against turn 1
    curate_events(engine, make_events(240, preferred="courteous", seed=13, start=now - timedelta(hours=3)))
    t3 = _turn(base_model, loop_env, small_run)
    assert t3["parent"] == t1["version"]
    assert t3["turn"]["since"] == t2["turn"]["until"]  # the rejected turn's data is not fed again
    assert t3["status"] == "canary", (t3["gate"], t3["report"]["comparisons"])
    comp = t3["report"]["comparisons"]
    assert comp["accuracy_gain_over_active"] is not None and comp["style_gain_over_active"] is not None
    assert t3["report"]["active"]["version"] == t1["version"]
    _promote(loop_env, t3["version"])

    with session_scope(engine) as session:
        versions = {v.version: v for v in registry.list_versions(session, base_model)}
        assert versions[t1["version"]].status == "retired"
        assert versions[t2["version"]].status == "rejected"
        assert versions[t3["version"]].status == "active"
        # the lineage chain: each names the version it was trained over, and the events it learned from
        assert versions[t1["version"]].parent_version is None
        assert versions[t2["version"]].parent_version == t1["version"]
        assert versions[t3["version"]].parent_version == t1["version"]
        lineage3 = versions[t3["version"]].lineage
        assert lineage3.parent_version == t1["version"] and lineage3.turn.replay_pairs > 0
        assert set(versions[t1["version"]].lineage.event_ids) & set(lineage3.event_ids)  # replayed
        assert versions[t3["version"]].manifest.dataset.turn.since == TurnRecord.model_validate(t2["turn"]).until
        audit = [(e.action, e.version, e.from_version) for e in registry.audit_log(session)]
        routing = registry.rollback(
            session, actor="test-oncall", reason="show where rollback lands", base_model=base_model
        )
    assert ("canary", t1["version"], None) in audit and ("promote", t1["version"], None) in audit
    assert ("register", t2["version"], t1["version"]) in audit and ("reject", t2["version"], None) in audit
    assert ("canary", t3["version"], t1["version"]) in audit
    assert ("promote", t3["version"], t1["version"]) in audit
    assert routing.active == t1["version"]  # rollback lands on the previous version, not the base
    assert json.dumps(t3["turn"])  # the turn record is plain JSON
