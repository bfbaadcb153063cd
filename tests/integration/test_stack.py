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
from urllib.parse import urlparse

import pytest
from sqlalchemy import inspect

from alignloop.core.kafka_auth import kafka_auth
from support.ports import free_port


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
        consumer = AIOKafkaConsumer(
            kafka_topic,
            bootstrap_servers=kafka_bootstrap,
            **kafka_auth(),
            group_id=kafka_group,
            auto_offset_reset="earliest",
        )
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


FAUST_APP = textwrap.dedent("""
    import json, sys
    import faust
    from alignloop.core.kafka_auth import faust_credentials

    app_id, bootstrap, topic_name, out, expected, datadir = sys.argv[1:7]
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", broker_credentials=faust_credentials(),
                    datadir=datadir, web_enabled=False,
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
""")


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
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            kafka_group,
            kafka_bootstrap,
            kafka_topic,
            str(out),
            str(len(payloads)),
            str(tmp_path / "faust-data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
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
    from alignloop.core.db import downgrade, upgrade

    upgrade(postgres_engine)
    assert "alignloop_meta" in inspect(postgres_engine).get_table_names()
    downgrade(postgres_engine, "base")
    assert inspect(postgres_engine).get_table_names() == ["alembic_version"]
    upgrade(postgres_engine)
    assert "alignloop_meta" in inspect(postgres_engine).get_table_names()


def _cli(env: dict, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from alignloop.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _private_env(tmp_path, core_settings) -> dict:
    """A stack of this test alone: own ports, own home, and none of the shared stack's passwords."""
    kport, cport, rport, pport = (free_port() for _ in range(4))
    env = {k: v for k, v in os.environ.items() if not (k.startswith("ALIGNLOOP_") and k.endswith("_PASSWORD"))}
    return {
        **env,
        "ALIGNLOOP_HOME": str(tmp_path / "home"),
        "ALIGNLOOP_CACHE_DIR": str(core_settings.cache_dir),
        "ALIGNLOOP_KAFKA_BOOTSTRAP": f"127.0.0.1:{kport}",
        "ALIGNLOOP_KAFKA_CONTROLLER_PORT": str(cport),
        "ALIGNLOOP_REDIS_URL": f"redis://127.0.0.1:{rport}/0",
        "ALIGNLOOP_POSTGRES_URL": f"postgresql+psycopg://alignloop@127.0.0.1:{pport}/alignloop",
    }


def _private_settings(env: dict):
    """The private stack's settings as its clients build them (passwords from its home's secrets)."""
    from alignloop.core.settings import CoreSettings

    return CoreSettings(
        home=env["ALIGNLOOP_HOME"],
        kafka_bootstrap=env["ALIGNLOOP_KAFKA_BOOTSTRAP"],
        redis_url=env["ALIGNLOOP_REDIS_URL"],
        postgres_url=env["ALIGNLOOP_POSTGRES_URL"],
        kafka_password=None,
        redis_password=None,
        postgres_password=None,
    )


def _assert_each_service_refuses_a_client_without_the_secret(env: dict) -> None:
    """Kafka, Redis and PostgreSQL take the secrets from <home>/secrets and refuse anyone without them."""
    import psycopg
    import redis
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError
    from sqlalchemy.engine import make_url

    from alignloop.core.kafka_auth import kafka_auth

    home = Path(env["ALIGNLOOP_HOME"])
    for name in ("kafka", "redis", "postgres"):
        path = home / "secrets" / name
        assert path.stat().st_mode & 0o777 == 0o600, f"{path} is {oct(path.stat().st_mode & 0o777)}"
    s = _private_settings(env)
    auth = kafka_auth(s)
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_password"] == (home / "secrets" / "kafka").read_text().strip()

    # Kafka: no SASL at all, a wrong password, then the right one
    for bad in ({}, {**auth, "sasl_plain_password": "not-the-secret"}):
        with pytest.raises((KafkaError, ValueError, OSError)):
            admin = KafkaAdminClient(
                bootstrap_servers=s.kafka_bootstrap, request_timeout_ms=5000, api_version_auto_timeout_ms=5000, **bad
            )
            try:
                admin.list_topics()
            finally:
                admin.close()
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, request_timeout_ms=10000, **auth)
    assert isinstance(admin.list_topics(), list)
    admin.close()

    # Redis: the URL in settings carries the password; without it every command is refused
    r = urlparse(s.redis_url)
    assert r.password == (home / "secrets" / "redis").read_text().strip()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=r.hostname, port=r.port, socket_timeout=3).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=r.hostname, port=r.port, password="not-the-secret", socket_timeout=3).ping()
    assert redis.Redis.from_url(s.redis_url, socket_timeout=3).ping()

    # PostgreSQL: scram-sha-256 on TCP and on the socket, for our role and for the superuser
    p = make_url(s.postgres_url)
    assert p.password == (home / "secrets" / "postgres").read_text().strip()
    for kwargs in (
        {"host": "127.0.0.1", "user": "alignloop"},
        {"host": "127.0.0.1", "user": "postgres"},
        {"host": "/tmp", "user": "postgres"},
        {"host": "127.0.0.1", "user": "alignloop", "password": "not-the-secret"},
    ):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(port=p.port, dbname="alignloop", connect_timeout=3, **kwargs).close()
    with psycopg.connect(s.postgres_url.replace("+psycopg", ""), connect_timeout=3) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _rotate_the_client_secrets(env: dict, old) -> dict:
    """Rotation as the README says: delete the client secrets, `stack up`; the old passwords are refused after.

    Returns the services' pids after (Redis restarts; Kafka and PostgreSQL change the credential in place)."""
    import psycopg
    import redis
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    home = Path(env["ALIGNLOOP_HOME"])
    for name in ("kafka", "redis", "postgres"):
        (home / "secrets" / name).unlink()
    up = _cli(env, "stack", "up", "--json")
    assert up.returncode == 0, up.stderr
    rows = {r["name"]: r for r in json.loads(up.stdout)}
    assert all(r["healthy"] for r in rows.values()), rows
    _assert_each_service_refuses_a_client_without_the_secret(env)
    new = _private_settings(env)
    assert (old.redis_url, old.postgres_url) != (new.redis_url, new.postgres_url)
    with pytest.raises((KafkaError, ValueError, OSError)):
        admin = KafkaAdminClient(
            bootstrap_servers=old.kafka_bootstrap,
            request_timeout_ms=5000,
            api_version_auto_timeout_ms=5000,
            **kafka_auth(old),
        )
        try:
            admin.list_topics()
        finally:
            admin.close()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(old.redis_url, socket_timeout=3).ping()
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(old.postgres_url.replace("+psycopg", ""), connect_timeout=3).close()
    return {name: r["pid"] for name, r in rows.items()}


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
    """`stack up` twice, three healthy services, a SIGKILLed broker back with topics and offsets, the client
    secrets rotated, `down` clean."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic
    from kafka.structs import OffsetAndMetadata

    env = _private_env(tmp_path, core_settings)
    kport = int(env["ALIGNLOOP_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1])
    pport = int(env["ALIGNLOOP_POSTGRES_URL"].rsplit(":", 1)[1].split("/")[0])
    pgdata = Path(f"/var/lib/alignloop/postgres-{pport}")
    try:
        first = _cli(env, "stack", "up", "--json")
        assert first.returncode == 0, first.stderr
        second = _cli(env, "stack", "up", "--json")
        assert second.returncode == 0, second.stderr
        status = _cli(env, "stack", "status", "--json")
        assert status.returncode == 0, status.stderr
        listed = json.loads(status.stdout)
        assert [r["name"] for r in listed][-1] == "engine"  # the serving engine is reported after the services
        rows = {r["name"]: r for r in listed[:-1]}
        assert set(rows) == {"kafka", "redis", "postgres"}
        assert all(r["healthy"] and r["ours"] for r in rows.values())
        pids = {name: r["pid"] for name, r in rows.items()}
        assert json.loads(second.stdout) and {r["pid"] for r in json.loads(second.stdout)} == set(pids.values())
        _assert_each_service_refuses_a_client_without_the_secret(env)
        auth = kafka_auth(_private_settings(env))

        bootstrap = f"127.0.0.1:{kport}"
        topic, group = "durable-topic", "durable-group"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, **auth)
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=bootstrap, **auth, acks="all", enable_idempotence=True)
        for i in range(100):
            producer.send(topic, str(i).encode(), partition=i % 2)
        producer.flush()
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, **auth, group_id=group, enable_auto_commit=False)
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

        consumer = KafkaConsumer(bootstrap_servers=bootstrap, **auth, group_id=group, enable_auto_commit=False)
        assert topic in consumer.topics()
        assert consumer.end_offsets(tps) == {tps[0]: 50, tps[1]: 50}
        assert consumer.committed(tps[0]) == 30 and consumer.committed(tps[1]) == 20
        consumer.close()
        pids["kafka"] = new_kafka["pid"]
        pids.update(_rotate_the_client_secrets(env, old=_private_settings(env)))
    finally:
        down = _cli(env, "stack", "down")
    assert down.returncode == 0, down.stderr
    for name, pid in pids.items():
        assert not _pid_alive(pid), f"{name} (pid {pid}) still running after down"
    import shutil

    shutil.rmtree(pgdata, ignore_errors=True)


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
def test_stack_up_converges_a_stack_an_earlier_session_started_without_auth(tmp_path, core_settings):
    """`stack up` over the pre-auth stack: Kafka and Redis restarted once, PostgreSQL given passwords in place,
    data kept, and afterwards each service refuses a client without the secret."""
    import psycopg
    import redis
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    env = _private_env(tmp_path, core_settings)
    bootstrap = env["ALIGNLOOP_KAFKA_BOOTSTRAP"]
    rurl, purl = env["ALIGNLOOP_REDIS_URL"], env["ALIGNLOOP_POSTGRES_URL"].replace("+psycopg", "")
    pgdata = Path(f"/var/lib/alignloop/postgres-{urlparse(purl).port}")
    pids: dict = {}
    old_up = (
        "import json; import support.pre_auth_stack as old; from alignloop.core.settings import CoreSettings; "
        "print(json.dumps({s.name: s.pid for s in old.up(CoreSettings())}))"
    )
    tests_dir = str(Path(__file__).parents[1])  # where `support` lives (pytest's pythonpath, not the child's)
    child_env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (tests_dir, env.get("PYTHONPATH")) if p)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", old_up], env=child_env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr[-2000:]
        before = json.loads(done.stdout.strip().splitlines()[-1])  # {name: pid}
        pids = dict(before)
        # what an earlier session left behind, written without any password
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic("kept", num_partitions=1, replication_factor=1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for i in range(10):
            producer.send("kept", str(i).encode())
        producer.flush()
        producer.close()
        redis.Redis.from_url(rurl).set("kept", "1")
        with psycopg.connect(purl, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")

        up = _cli(env, "stack", "up", "--json")
        assert up.returncode == 0, up.stderr
        after = {r["name"]: r for r in json.loads(up.stdout)}
        pids = {name: r["pid"] for name, r in after.items()}
        assert all(r["healthy"] and r["ours"] for r in after.values()), after
        assert pids["kafka"] != before["kafka"] and pids["redis"] != before["redis"]
        assert pids["postgres"] == before["postgres"]  # a reload, not a restart
        assert not _pid_alive(before["kafka"]) and not _pid_alive(before["redis"])
        _assert_each_service_refuses_a_client_without_the_secret(env)

        s = _private_settings(env)
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, **kafka_auth(s))
        assert consumer.end_offsets([TopicPartition("kept", 0)]) == {TopicPartition("kept", 0): 10}
        consumer.close()
        assert redis.Redis.from_url(s.redis_url).get("kept") == b"1"
        with psycopg.connect(s.postgres_url.replace("+psycopg", "")) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)

        again = _cli(env, "stack", "up", "--json")  # converged: nothing restarts a second time
        assert again.returncode == 0, again.stderr
        assert {r["name"]: r["pid"] for r in json.loads(again.stdout)} == pids
    finally:
        down = _cli(env, "stack", "down")
        import shutil

        shutil.rmtree(pgdata, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    for name, pid in pids.items():
        assert not _pid_alive(pid), f"{name} (pid {pid}) still running after down"
