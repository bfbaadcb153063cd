"""The foundation on the real services: clients talk to the broker, Redis, migrations on both stores,
and a private stack (own ports and state) brought up twice, killed, brought back and taken down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import inspect
from support.ports import free_port

from alignloop.kafka_auth import kafka_auth


@pytest.mark.kafka
def test_kafka_python_message_reaches_aiokafka(kafka_bootstrap, kafka_topic, kafka_group):
    import asyncio

    from aiokafka import AIOKafkaConsumer
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, **kafka_auth(), acks="all", enable_idempotence=True)
    payloads = [f"m-{i}-{uuid.uuid4().hex}".encode() for i in range(50)]
    for p in payloads:
        producer.send(kafka_topic, p, key=b"k")
    producer.flush()
    producer.close()

    async def consume() -> list[bytes]:
        consumer = AIOKafkaConsumer(kafka_topic, bootstrap_servers=kafka_bootstrap, **kafka_auth(),
                                    group_id=kafka_group,
                                    auto_offset_reset="earliest")
        await consumer.start()
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + 30
            while len(got) < len(payloads) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    got.extend(r.value for r in records)
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(consume()) == payloads  # one key: one partition: order kept


FAUST_APP = textwrap.dedent('''
    import json, sys
    import faust

    app_id, bootstrap, topic_name, out, expected, datadir = sys.argv[1:7]
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", datadir=datadir, web_enabled=False,
                    topic_replication_factor=1, consumer_auto_offset_reset="earliest", store="memory://")
    topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw")
    seen = []

    @app.agent(topic)
    async def collect(stream):
        async for value in stream:
            seen.append(value.decode())
            if len(seen) >= int(expected):
                with open(out, "w") as fh:
                    json.dump(seen, fh)

    if __name__ == "__main__":
        sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
        app.main()
''')


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_python_message_reaches_a_faust_agent(kafka_bootstrap, kafka_topic, kafka_group, tmp_path):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, **kafka_auth(), acks="all")
    payloads = [f"f-{i}" for i in range(20)]
    for p in payloads:
        producer.send(kafka_topic, p.encode(), key=b"same")
    producer.flush()
    producer.close()

    script = tmp_path / "faust_app.py"
    script.write_text(FAUST_APP)
    out = tmp_path / "seen.json"
    proc = subprocess.Popen([sys.executable, str(script), kafka_group, kafka_bootstrap, kafka_topic, str(out),
                             str(len(payloads)), str(tmp_path / "faust-data")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        if not out.exists():
            proc.kill()
            pytest.fail("faust agent consumed nothing: " + proc.stdout.read().decode()[-2000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    assert json.loads(out.read_text()) == payloads


@pytest.mark.redis
def test_redis_round_trip(redis_client):
    redis_client.set("alignloop:probe", "1", ex=60)
    assert redis_client.get("alignloop:probe") == "1"
    assert redis_client.incr("alignloop:counter") == 1
    assert redis_client.dbsize() == 2


@pytest.mark.postgres
def test_migrations_up_and_down_on_postgres(postgres_engine):
    from alignloop.db import downgrade, upgrade

    upgrade(postgres_engine)
    assert "alignloop_meta" in inspect(postgres_engine).get_table_names()
    downgrade(postgres_engine, "base")
    assert inspect(postgres_engine).get_table_names() == ["alembic_version"]
    upgrade(postgres_engine)
    assert "alignloop_meta" in inspect(postgres_engine).get_table_names()


def _cli(env: dict, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from alignloop.cli import main; main()", *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
def test_private_stack_up_twice_survives_sigkill_and_goes_down(tmp_path, core_settings):
    """`stack up` twice, three healthy services, a SIGKILLed broker back with topics and offsets, `down` clean."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic
    from kafka.structs import OffsetAndMetadata

    kport, cport, rport, pport = (free_port() for _ in range(4))
    env = {**os.environ, "ALIGNLOOP_HOME": str(tmp_path / "home"),
           "ALIGNLOOP_CACHE_DIR": str(core_settings.cache_dir),
           "ALIGNLOOP_KAFKA_BOOTSTRAP": f"127.0.0.1:{kport}", "ALIGNLOOP_KAFKA_CONTROLLER_PORT": str(cport),
           "ALIGNLOOP_REDIS_URL": f"redis://127.0.0.1:{rport}/0",
           "ALIGNLOOP_POSTGRES_URL": f"postgresql+psycopg://alignloop@127.0.0.1:{pport}/alignloop"}
    pgdata = Path(f"/var/lib/alignloop/postgres-{pport}")
    try:
        first = _cli(env, "stack", "up", "--json")
        assert first.returncode == 0, first.stderr
        second = _cli(env, "stack", "up", "--json")
        assert second.returncode == 0, second.stderr
        status = _cli(env, "stack", "status", "--json")
        assert status.returncode == 0, status.stderr
        rows = {r["name"]: r for r in json.loads(status.stdout)}
        assert set(rows) == {"kafka", "redis", "postgres"}
        assert all(r["healthy"] and r["ours"] for r in rows.values())
        pids = {name: r["pid"] for name, r in rows.items()}
        assert json.loads(second.stdout) and {r["pid"] for r in json.loads(second.stdout)} == set(pids.values())

        bootstrap = f"127.0.0.1:{kport}"
        topic, group = "durable-topic", "durable-group"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_auth())
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=bootstrap, **kafka_auth(), acks="all", enable_idempotence=True)
        for i in range(100):
            producer.send(topic, str(i).encode(), partition=i % 2)
        producer.flush()
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, **kafka_auth(), group_id=group, enable_auto_commit=False)
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        consumer.assign(tps)
        consumer.commit({tps[0]: OffsetAndMetadata(30, "", -1), tps[1]: OffsetAndMetadata(20, "", -1)})
        consumer.close()

        os.kill(pids["kafka"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _pid_alive(pids["kafka"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _pid_alive(pids["kafka"])
        back = _cli(env, "stack", "up", "--json")
        assert back.returncode == 0, back.stderr
        new_kafka = {r["name"]: r for r in json.loads(back.stdout)}["kafka"]
        assert new_kafka["healthy"] and new_kafka["pid"] != pids["kafka"]

        consumer = KafkaConsumer(bootstrap_servers=bootstrap, **kafka_auth(), group_id=group, enable_auto_commit=False)
        assert topic in consumer.topics()
        assert consumer.end_offsets(tps) == {tps[0]: 50, tps[1]: 50}
        assert consumer.committed(tps[0]) == 30 and consumer.committed(tps[1]) == 20
        consumer.close()
        pids["kafka"] = new_kafka["pid"]
    finally:
        down = _cli(env, "stack", "down")
    assert down.returncode == 0, down.stderr
    for name, pid in pids.items():
        assert not _pid_alive(pid), f"{name} (pid {pid}) still running after down"
    import shutil

    shutil.rmtree(pgdata, ignore_errors=True)
