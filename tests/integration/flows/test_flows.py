"""The loop's flows on real parts: curated store, TRL/PEFT training on the tiny model, the registry, serving."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_opposite_style_stops_at_the_gate(prefect_harness, base_model, loop_env, make_events, curate_events, small_run):
    from alignloop.core.db import session_scope
    from deploy import registry
    from flows.loop import retrain_flow

    curated = curate_events(loop_env["engine"], make_events(240, preferred="curt", seed=3))
    assert curated["pairs"] >= 100, curated

    state = retrain_flow(
        base_model=base_model,
        train_config=str(small_run),
        store_url=loop_env["store_url"],
        redis_url=loop_env["redis_url"],
        return_state=True,
    )
    result = state.result()
    assert result["status"] == "gate_failed"
    assert any("preferred_style_share" in f for f in result["gate"]["failures"]), result["gate"]
    assert "stopped at the gate" in state.message and "preferred_style_share" in state.message
    with session_scope(loop_env["engine"]) as session:
        routing = registry.get_routing(session, base_model)
        assert routing.active is None and routing.canary is None  # nothing promoted, nothing canaried
        version = registry.get_version(session, result["version"])
        assert version.status == "rejected"
        entries = [e for e in registry.audit_log(session) if e.version == result["version"]]
    assert any("gate failed" in e.reason and "preferred_style_share" in e.reason for e in entries), entries


def test_a_failed_evaluation_leaves_no_candidate_waiting(
    prefect_harness, base_model, loop_env, make_events, curate_events, small_run, tmp_path
):
    """The candidate is registered before its evaluation (so replicas can stage it); when the evaluation or the
    gate fails, it is marked rejected with the reason, not left a candidate."""
    from alignloop.core.db import session_scope
    from deploy import registry
    from flows.loop import retrain_flow

    curate_events(loop_env["engine"], make_events(120, preferred="courteous", seed=5))
    gates = tmp_path / "gates.yaml"
    gates.write_text("gates: [this is not a gate policy\n")  # broken YAML: the gate step raises
    state = retrain_flow(
        base_model=base_model,
        train_config=str(small_run),
        gates=str(gates),
        store_url=loop_env["store_url"],
        redis_url=loop_env["redis_url"],
        return_state=True,
    )
    assert state.is_failed(), state
    with session_scope(loop_env["engine"]) as session:
        versions = registry.list_versions(session, base_model)
        assert [v.status for v in versions] == ["rejected"], versions
        entries = [e for e in registry.audit_log(session) if e.version == versions[0].version]
        assert registry.get_routing(session, base_model).canary is None
    assert any("evaluation failed" in e.reason for e in entries), entries


def _serve_and_rate(client, users, n, rng, seed0) -> list[dict]:
    """Simulated honest users (preferring courteous answers) ask serving and judge what they get."""
    from flows.simulate import honest_feedback
    from retrain.corpus import PROMPTS

    events = []
    t = datetime.now(UTC) - timedelta(hours=2)
    for i in range(n):
        user, prompt = rng.choice(users), rng.choice(PROMPTS)
        r = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": prompt}], "max_tokens": 40, "seed": seed0 + i, "user": user},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        answer = {"text": body["choices"][0]["message"]["content"]}
        kind, fields = honest_feedback(prompt, [answer], rng, noise=0.05)
        t += timedelta(seconds=rng.uniform(5, 15))
        events.append(
            {
                "schema_version": 1,
                "event_id": str(uuid.uuid4()),
                "occurred_at": t.isoformat(),
                "app_id": "flows-test",
                "user_id": user,
                "prompt": prompt,
                "kind": kind,
                **fields,
                "response_id": body["response_id"],
                "adapter_version": body["adapter_version"],
                "feedback_token": body["feedback_token"],
            }
        )
    return events


def test_a_canary_users_like_less_is_rolled_back(
    prefect_harness, base_model, loop_env, tmp_path, make_events, curate_events, small_run
):
    # an adapter that answers curtly, which these users dislike, goes out as a 50% canary against the base
    import json

    from fastapi.testclient import TestClient

    from alignloop.core.db import session_scope
    from curation.replay import run_replay
    from curation.settings import get_settings as curation_settings
    from deploy import registry
    from deploy.serving import create_app
    from deploy.settings import get_settings as deploy_settings
    from flows.loop import canary_watch_flow
    from retrain.config import load_run_config
    from retrain.snapshot import build_snapshot
    from retrain.train import train_adapter

    replayed = run_replay(
        [json.dumps(e) for e in make_events(240, preferred="curt", seed=5)], curation_settings().policy
    )
    cfg = load_run_config(small_run)
    snap = build_snapshot(replayed.pairs, replayed.unpaired, cfg.snapshot)
    artifact = train_adapter(base_model, snap, cfg, tmp_path / "runs", progress=False)
    with session_scope(loop_env["engine"]) as session:
        version = registry.register_adapter(session, artifact, actor="test", reason="curt adapter").version
        registry.start_canary(session, version, 0.5, actor="test", reason="canary under test")

    settings = deploy_settings().model_copy(update={"base_model": base_model, "reconcile_interval_s": 0.5})
    rng = random.Random(11)
    users = [f"u-{i:03d}" for i in range(60)]
    verdicts = []
    from deploy.keys import create_serving_key

    with session_scope(loop_env["engine"]) as session:
        key = create_serving_key(session, "flows-test", created_by="test", rate_per_s=1000, burst=1000)[1]
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        for round_ in range(20):
            events = _serve_and_rate(client, users, 40, rng, seed0=1000 * round_)
            curate_events(loop_env["engine"], events)
            out = canary_watch_flow(
                base_model=base_model, store_url=loop_env["store_url"], redis_url=loop_env["redis_url"]
            )
            verdicts.append(out)
            if out["verdict"] != "continue":
                break
    final = verdicts[-1]
    print(
        f"\ncanary-watch verdict {final['verdict']} after {final['canary_events']} canary feedback events "
        f"({len(verdicts)} rounds): {final['reason']}"
    )
    assert final["verdict"] == "rollback", final
    with session_scope(loop_env["engine"]) as session:
        routing = registry.get_routing(session, base_model)
        assert routing.canary is None and routing.active is None
        assert registry.get_version(session, version).status == "rolled_back"
        assert any(e.action == "rollback" and "canary-watch" in e.reason for e in registry.audit_log(session))
