"""Service credentials in core settings: passwords into the URLs, Kafka client kwargs, env over the secret files."""

from __future__ import annotations

import pytest

from alignloop.core.errors import AlignloopError
from alignloop.core.kafka_auth import faust_credentials, kafka_auth
from alignloop.core.keys import load_or_create_secret
from alignloop.core.settings import CoreSettings


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in (
        "KAFKA_PASSWORD",
        "REDIS_PASSWORD",
        "POSTGRES_PASSWORD",
        "REDIS_URL",
        "POSTGRES_URL",
        "KAFKA_SECURITY_PROTOCOL",
    ):
        monkeypatch.delenv(f"ALIGNLOOP_{name}", raising=False)
    monkeypatch.setenv("ALIGNLOOP_HOME", str(tmp_path))
    return tmp_path


def test_the_stack_secrets_go_into_the_urls_and_the_kafka_kwargs(clean_env):
    home = clean_env
    r, p, k = (load_or_create_secret(home, n) for n in ("redis", "postgres", "kafka"))
    s = CoreSettings()
    assert s.redis_url == f"redis://:{r}@127.0.0.1:6379/0"
    assert s.postgres_url == f"postgresql+psycopg://alignloop:{p}@127.0.0.1:5433/alignloop"
    assert kafka_auth(s) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alignloop",
        "sasl_plain_password": k,
    }
    creds = faust_credentials(s)
    assert (creds.username, creds.password, creds.mechanism.value) == ("alignloop", k, "SCRAM-SHA-512")
    assert s.service_credentials_env() == {
        "ALIGNLOOP_KAFKA_PASSWORD": k,
        "ALIGNLOOP_REDIS_PASSWORD": r,
        "ALIGNLOOP_POSTGRES_PASSWORD": p,
    }


def test_env_wins_over_the_files_and_a_url_with_a_password_is_kept(clean_env, monkeypatch):
    load_or_create_secret(clean_env, "redis")
    monkeypatch.setenv("ALIGNLOOP_REDIS_URL", "rediss://:managed@redis.example:6380/2")
    monkeypatch.setenv("ALIGNLOOP_POSTGRES_PASSWORD", "p/w@x")
    monkeypatch.setenv("ALIGNLOOP_KAFKA_PASSWORD", "kpw")
    s = CoreSettings()
    assert s.redis_url == "rediss://:managed@redis.example:6380/2"
    assert s.postgres_url == "postgresql+psycopg://alignloop:p%2Fw%40x@127.0.0.1:5433/alignloop"
    assert kafka_auth(s)["sasl_plain_password"] == "kpw"


def test_without_a_secret_the_urls_stay_and_kafka_names_what_is_missing(clean_env, monkeypatch):
    s = CoreSettings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    with pytest.raises(AlignloopError, match=r"ALIGNLOOP_KAFKA_PASSWORD.*stack up"):
        kafka_auth(s)
    assert not (clean_env / "secrets").exists()  # clients never create the services' secrets
    monkeypatch.setenv("ALIGNLOOP_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    assert kafka_auth(CoreSettings()) == {"security_protocol": "PLAINTEXT"}  # so the SDK takes no SASL default
    assert faust_credentials(CoreSettings()) is None
