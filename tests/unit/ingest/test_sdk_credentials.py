"""The SDK's Kafka login: constructor arguments over ALIGNLOOP_KAFKA_* variables over the stack's defaults."""

import pytest

from alignloop_sdk import DeliveryError, FeedbackClient, kafka_security


def test_with_only_a_password_the_sdk_logs_in_as_the_stack_expects():
    assert kafka_security(env={"ALIGNLOOP_KAFKA_PASSWORD": "pw"}) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alignloop",
        "sasl_plain_password": "pw",
    }


def test_arguments_win_over_the_variables():
    env = {
        "ALIGNLOOP_KAFKA_PASSWORD": "env-pw",
        "ALIGNLOOP_KAFKA_USERNAME": "env-user",
        "ALIGNLOOP_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "ALIGNLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    }
    assert kafka_security(env=env) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "env-user",
        "sasl_plain_password": "env-pw",
    }
    assert kafka_security("sasl_plaintext", "PLAIN", "app", "arg-pw", env=env) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "app",
        "sasl_plain_password": "arg-pw",
    }


def test_a_broker_without_auth_takes_no_password():
    assert kafka_security(env={"ALIGNLOOP_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}) == {"security_protocol": "PLAINTEXT"}
    assert kafka_security("PLAINTEXT", env={"ALIGNLOOP_KAFKA_PASSWORD": "pw"}) == {"security_protocol": "PLAINTEXT"}


def test_sasl_without_a_password_is_one_clear_error_before_any_connection(monkeypatch):
    with pytest.raises(DeliveryError, match=r"`sasl_plain_password` \(or ALIGNLOOP_KAFKA_PASSWORD\) is required"):
        kafka_security(env={})
    monkeypatch.delenv("ALIGNLOOP_KAFKA_PASSWORD", raising=False)
    monkeypatch.delenv("ALIGNLOOP_KAFKA_SECURITY_PROTOCOL", raising=False)
    with pytest.raises(DeliveryError, match="ALIGNLOOP_KAFKA_PASSWORD"):
        FeedbackClient("shop-bot", "127.0.0.1:1")  # no broker there: the error comes before connecting
