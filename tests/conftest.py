"""Fixtures for the real services: URLs from env (core settings), one isolated resource per test.

A missing service skips a test on a developer's machine and fails it when CI=true.
"""

from __future__ import annotations

import itertools
import os
import uuid
from urllib.parse import urlparse, urlunparse

import pytest

from alignloop.core.kafka_auth import kafka_auth

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _export_service_credentials() -> None:
    """Tests move ALIGNLOOP_HOME to tmp dirs; the services' passwords stay those under the stack's home."""
    from alignloop.core.settings import CoreSettings

    for name, value in CoreSettings().service_credentials_env().items():
        os.environ.setdefault(name, value)


_export_service_credentials()


def _safe(url: str) -> str:
    u = urlparse(url)
    return urlunparse(u._replace(netloc=u.netloc.rsplit("@", 1)[-1]))


def unavailable(what: str) -> None:
    msg = f"{what} is not reachable; start it with `alignloop stack up`"
    if IN_CI:
        pytest.fail(f"{msg} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session", autouse=True)
def _stage_migrations_registered() -> None:
    """The tests' stores are the product's shared store: every stage's branch is registered, as `alignloop` does."""
    from flows.store import register_stage_migrations

    register_stage_migrations()


@pytest.fixture(scope="session")
def core_settings():
    from alignloop.core.settings import get_settings

    return get_settings()


# ---------------------------------------------------------------- Kafka
@pytest.fixture(scope="session")
def kafka_bootstrap(core_settings) -> str:
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=core_settings.kafka_bootstrap, request_timeout_ms=5000, **kafka_auth()
        )
        admin.list_topics()
        admin.close()
    except Exception:
        unavailable(f"Kafka at {core_settings.kafka_bootstrap}")
    return core_settings.kafka_bootstrap


def create_topic(bootstrap: str, name: str, partitions: int = 3) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_auth())
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return name


@pytest.fixture
def kafka_topic(kafka_bootstrap) -> str:
    """A fresh topic (3 partitions) for this test alone, deleted afterwards."""
    from kafka import KafkaAdminClient

    name = create_topic(kafka_bootstrap, f"test-{uuid.uuid4().hex[:12]}")
    yield name
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, **kafka_auth())
    try:
        admin.delete_topics([name])
    except Exception:
        pass  # cleanup only; the name is unique anyway
    finally:
        admin.close()


@pytest.fixture
def curation_topic(kafka_bootstrap) -> str:
    """A fresh feedback topic with its .rejected and .dlq (3 partitions, made by ensure_topics), deleted afterwards."""
    from ingest.topics import ensure_topics, topic_names
    from support.kafka_topics import delete_topics

    base = f"test-feedback-{uuid.uuid4().hex[:10]}"
    ensure_topics(kafka_bootstrap, partitions=3, base=base, replication_factor=1)
    yield base
    delete_topics(kafka_bootstrap, list(topic_names(base)))


@pytest.fixture
def kafka_group() -> str:
    return f"test-group-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------- Redis
_redis_dbs = itertools.cycle(range(1, 16))  # db 0 is the default stack's own


@pytest.fixture
def redis_url(core_settings) -> str:
    """A Redis URL on a db of its own, flushed before the test."""
    import redis

    u = urlparse(core_settings.redis_url)
    url = urlunparse(u._replace(path=f"/{next(_redis_dbs)}"))
    try:
        client = redis.Redis.from_url(url, socket_timeout=3)
        client.flushdb()
        client.close()
    except Exception:
        unavailable(f"Redis at {_safe(core_settings.redis_url)}")
    return url


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


# ---------------------------------------------------------------- stores
@pytest.fixture(scope="session")
def postgres_url(core_settings) -> str:
    import psycopg

    url = core_settings.postgres_url
    try:
        psycopg.connect(url.replace("+psycopg", ""), connect_timeout=3).close()
    except Exception:
        unavailable(f"PostgreSQL at {_safe(url)}")
    return url


@pytest.fixture
def postgres_engine(postgres_url):
    """An engine whose search_path is a fresh schema, dropped after the test."""
    from sqlalchemy import text

    from alignloop.core.db import make_engine

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(postgres_url, schema=schema)
    yield engine
    engine.dispose()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def sqlite_engine(tmp_path):
    from alignloop.core.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_engine(request):
    """Each test using it runs on the embedded SQLite store and on PostgreSQL, migrated to heads."""
    from alignloop.core.db import upgrade

    engine = request.getfixturevalue(f"{request.param}_engine")
    upgrade(engine)
    return engine
