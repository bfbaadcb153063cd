"""The stream path end to end: generator stream -> Kafka -> faust workers -> store, against the offline replay."""

import hashlib
import json

import pytest

from curation.pii import find_pii
from curation.replay import run_replay
from curation.settings import Policy
from support.feed import publish_lines
from support.stream.generate import generate
from support.stream.harness import Workers, expected_ids, read_topic
from support.stream.score import score

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


def _same_as_replay(out: dict, replay) -> None:
    rejected = {d["event_id"] for d in replay.decisions}
    assert out["decisions"] == [d for d in replay.decisions if d["event_id"] in rejected]
    assert out["pairs"] == replay.pairs
    assert out["unpaired"] == replay.unpaired
    assert sorted(d["sha256"] for d in out["dlq"]) == sorted(d["sha256"] for d in replay.dlq)


def test_stream_meets_the_acceptance_and_equals_the_replay(
    tmp_path, curation_topic, kafka_group, redis_url, kafka_bootstrap
):
    lines, truth, world = generate(seed=5, scale=0.3, hours=4.0)
    publish_lines(kafka_bootstrap, curation_topic, lines)
    workers = Workers(tmp_path, topic=curation_topic, group=kafka_group, redis_url=redis_url, bootstrap=kafka_bootstrap)
    want = expected_ids(lines)
    try:
        workers.start()
        workers.wait_for(lambda c: c["decisions"] >= want, 240, f"{want} decisions")
        out = workers.outputs()
    finally:
        workers.stop_all()
    replay = run_replay(lines, Policy())
    _same_as_replay(out, replay)
    # what was written anywhere carries no regex-detectable PII: store rows, rejected and dead-letter topics
    side = read_topic(kafka_bootstrap, f"{curation_topic}.rejected") + read_topic(
        kafka_bootstrap, f"{curation_topic}.dlq"
    )
    assert side and not [m for m in side if find_pii(m.decode(errors="replace"))]
    # refused by the contract there, or dropped by a guard (`stage`, tested in test_curation_alarms.py)
    assert all(
        json.loads(m)["reasons"][0].startswith("contract_") or "stage" in json.loads(m)
        for m in read_topic(kafka_bootstrap, f"{curation_topic}.rejected")
    )
    # the stream names a dead letter by partition:offset; map it back to its line through the hash
    lines_of: dict[str, list[int]] = {}
    for n, line in enumerate(lines, start=1):
        lines_of.setdefault(hashlib.sha256(line.encode()).hexdigest(), []).append(n)
    assert len(out["dlq"]) == sum(len(lines_of[sha]) for sha in {d["sha256"] for d in out["dlq"]})
    dlq = [{"line": n} for sha in sorted({d["sha256"] for d in out["dlq"]}) for n in lines_of[sha]]
    s = score(truth, world, out["decisions"], out["pairs"], out["unpaired"], dlq, out["staged_texts"])
    assert all(s["acceptance"].values()), json.dumps(s, indent=1)


def test_sigkill_three_times_and_two_workers_leave_the_same_store(
    tmp_path, curation_topic, kafka_group, redis_url, kafka_bootstrap
):
    lines, _, _ = generate(seed=9, scale=0.25, hours=3.0)
    publish_lines(kafka_bootstrap, curation_topic, lines)
    want = expected_ids(lines)
    workers = Workers(
        tmp_path,
        topic=curation_topic,
        group=kafka_group,
        redis_url=redis_url,
        bootstrap=kafka_bootstrap,
        batch_size="40",
    )
    total_staged = want - sum(1 for line in lines if '"contract' in line)  # a lower bound is enough below
    try:
        proc = workers.start()
        workers.start()  # a partner: two workers share the partitions (and one of them is killed, three times)
        for fraction in (0.2, 0.5, 0.8):
            workers.wait_for(lambda c, f=fraction: c["staged"] >= f * total_staged, 180, f"{fraction:.0%} staged")
            workers.kill(proc)
            proc = workers.start()
        workers.wait_for(lambda c: c["decisions"] >= want, 300, f"{want} decisions")
        out = workers.outputs()
    finally:
        workers.stop_all()
    _same_as_replay(out, run_replay(lines, Policy()))
    assert out["counts"]["decisions"] == want  # no lost rows, no duplicate rows
