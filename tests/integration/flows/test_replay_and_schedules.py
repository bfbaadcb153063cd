"""The replay flow re-curates a Kafka range like the offline replay; the schedules the serve command registers."""

from __future__ import annotations

import json

import pytest

from alignloop.core.kafka_auth import kafka_auth


@pytest.mark.kafka
@pytest.mark.redis
def test_replay_flow_recurates_a_topic_range_like_the_offline_replay(
    prefect_harness, kafka_bootstrap, kafka_topic, tmp_path, make_events
):
    from kafka import KafkaProducer

    from curation.replay import run_replay
    from curation.settings import get_settings
    from flows.loop import replay_flow

    events = make_events(90, preferred="courteous", seed=9)
    lines = [json.dumps(e).encode() for e in events]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, **kafka_auth(), acks="all")
    for line in lines:
        producer.send(kafka_topic, line, key=b"one-conversation")  # one partition: broker order = file order
    producer.send(kafka_topic, b"{not json", key=b"one-conversation")
    producer.flush()
    producer.close()

    out = replay_flow(out_dir=str(tmp_path / "replayed"), topic=kafka_topic, bootstrap=kafka_bootstrap)
    expected = run_replay([*lines, b"{not json"], get_settings().policy)
    assert out["events"] == 91 and out["dlq"] == 1
    written = [json.loads(x) for x in (tmp_path / "replayed" / "decisions.jsonl").read_text().splitlines()]
    assert written == expected.decisions
    pairs = [json.loads(x) for x in (tmp_path / "replayed" / "pairs.jsonl").read_text().splitlines()]
    assert pairs == expected.pairs and len(pairs) > 0


def test_data_trigger_waits_for_enough_new_pairs(prefect_harness, base_model, loop_env, make_events, curate_events):
    from flows.loop import data_trigger_flow

    curated = curate_events(loop_env["engine"], make_events(60, preferred="courteous", seed=4))
    out = data_trigger_flow(base_model=base_model, min_new_pairs=curated["pairs"] + 1, store_url=loop_env["store_url"])
    assert out == {
        "pairs_total": curated["pairs"],
        "pairs_at_last_snapshot": 0,
        "new_pairs": curated["pairs"],
        "threshold": curated["pairs"] + 1,
        "triggered": False,
    }


def test_serve_registers_the_loop_with_schedules_and_one_retrain_at_a_time():
    from flows.schedule import build_deployments
    from flows.settings import FlowsSettings

    settings = FlowsSettings(
        retrain_cron="15 2 * * *",
        min_new_pairs=300,
        data_check_interval_s=120,
        canary_watch_interval_s=30,
        base_model="/models/base",
    )
    deps = {d.name: d for d in build_deployments(settings)}
    assert set(deps) == {"retrain", "data-trigger", "canary-watch", "replay"}
    assert deps["retrain"].schedules[0].schedule.cron == "15 2 * * *"
    assert deps["retrain"].concurrency_limit == 1
    assert deps["data-trigger"].parameters["min_new_pairs"] == 300
    assert deps["data-trigger"].schedules[0].schedule.interval.total_seconds() == 120
    assert deps["canary-watch"].schedules[0].schedule.interval.total_seconds() == 30
    assert all(d.parameters.get("base_model") == "/models/base" for n, d in deps.items() if n != "replay")
    assert not deps["replay"].schedules
