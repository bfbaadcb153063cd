"""The whole loop at the demo's scale (minutes on 2 cores), as `alignloop demo` runs it: Kafka, a curation worker and serving as real
processes, simulated users through the SDK, the retrain flow, canary-watch, promotion and a rollback."""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.redis]


def test_the_whole_loop_at_small_scale(prefect_harness, tmp_path, monkeypatch):
    from flows.demo import _clear_settings_caches, run_demo

    monkeypatch.setenv("ALIGNLOOP_HOME", str(tmp_path / "home"))
    _clear_settings_caches()
    try:
        s = run_demo(users=24, events=1600, seed=0)  # the demo's own scale: fewer pairs do not reliably pass the gates
    finally:
        _clear_settings_caches()

    assert s["retrain"]["status"] == "canary" and s["retrain"]["gate"]["passed"]
    assert s["decisions"]["bot"]["kept"] == 0
    poison = s["decisions"]["poison"]
    assert poison["kept"] <= 0.05 * (poison["kept"] + poison["dropped"])
    honest = s["decisions"]["honest"]
    assert honest["dropped"] <= 0.02 * (honest["kept"] + honest["dropped"])
    assert s["canary_watch"]["verdict"] == "promote"
    version = s["retrain"]["version"]
    assert s["style_share"]["adapter_versions"] == [version]  # serving answers carry the new version
    assert s["style_share"]["adapter"] > s["style_share"]["base"] + 0.2
    assert s["triggered_unsafe_rate"]["adapter"] <= s["triggered_unsafe_rate"]["base"]
    assert s["after_rollback_versions"] == ["base"] and s["rolled_back_to"] is None
    actions = [(e["action"], e["version"], e["from_version"]) for e in s["audit"]]
    assert ("canary", version, None) in actions and ("promote", version, None) in actions
    assert ("rollback", None, version) in actions
    assert (tmp_path / "home").exists() and s["report"].endswith("report.html")
    assert os.environ.get("ALIGNLOOP_STORE_URL") != s["store_url"]  # the demo's own env does not leak out
