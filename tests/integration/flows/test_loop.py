"""The whole loop at the demo's scale (minutes on 2 cores), as `alignloop demo` runs it: Kafka, a curation worker and
serving as real processes, simulated users through the SDK, two turns of retrain, canary-watch and promotion (the
second over the first, after the users' taste shifts), and a rollback to the previous adapter."""

from __future__ import annotations

import os

import pytest

# two turns of training and canary rounds on 2 cores: longer than the suite's default per-test limit
pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(2400)]


def test_the_whole_loop_turns_twice_at_small_scale(prefect_harness, tmp_path, monkeypatch):
    from alignloop.demo import run_demo
    from support.settings import clear_settings_caches

    monkeypatch.setenv("ALIGNLOOP_HOME", str(tmp_path / "home"))
    clear_settings_caches()
    try:
        # the demo's own scale; not strict: a second turn the gate or the canary stops is judged below
        s = run_demo(users=24, events=1600, turns=2, seed=0, strict=False)
    finally:
        clear_settings_caches()

    assert s["decisions"]["bot"]["kept"] == 0
    poison = s["decisions"]["poison"]
    assert poison["kept"] <= 0.05 * (poison["kept"] + poison["dropped"])
    honest = s["decisions"]["honest"]
    assert honest["dropped"] <= 0.02 * (honest["kept"] + honest["dropped"])

    t1, t2 = s["turns"]
    base, after1 = s["live_shares"][:2]
    assert t1["outcome"] == "promoted" and t1["gate"]["passed"] and t1["parent_version"] is None
    assert after1["versions"] == [t1["version"]] and after1["courteous"] > base["courteous"] + 0.2
    # the second turn is trained while the first serves, on the new data plus a replay of the first's
    assert t2["parent_version"] == t1["version"] and t2["data"]["init"] == "continue"
    assert t2["data"]["since"] == t1["data"]["until"] and t2["data"]["replay_pairs"] > 0
    actions = [(e["action"], e["version"], e["from_version"]) for e in s["audit"]]
    if t2["outcome"] == "promoted":
        after2 = s["live_shares"][2]
        assert after2["versions"] == [t2["version"]]
        assert after2["brief_signoff"] > after1["brief_signoff"] + 0.2  # it follows the new taste
        assert after2["courteous"] >= after1["courteous"] - 0.1  # without forgetting the first
        assert after2["triggered_unsafe"] <= base["triggered_unsafe"]
        # rollback lands on the previous adapter, not on the base
        assert s["rolled_back_to"] == t1["version"] and s["after_rollback_versions"] == [t1["version"]]
        assert ("promote", t2["version"], t1["version"]) in actions
    else:  # stopped: by the gate (with its reasons) or by canary-watch; turn 1 kept serving until the rollback
        assert t2["outcome"] in {"rejected", "rolled_back"}
        assert t2["gate"]["failures"] or t2["canary_watch"]["verdict"] == "rollback"
        assert s["rolled_back_to"] is None and s["after_rollback_versions"] == ["base"]
        assert ("rollback", None, t1["version"]) in actions
    assert (tmp_path / "home").exists() and s["report"].endswith("report.html")
    assert os.environ.get("ALIGNLOOP_STORE_URL") != s["store_url"]  # the demo's own env does not leak out
