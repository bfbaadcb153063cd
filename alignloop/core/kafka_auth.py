"""Kafka client credentials from core settings: one place that every producer, consumer and admin takes them from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from alignloop.core.errors import AlignloopError
from alignloop.core.settings import CoreSettings, get_settings

if TYPE_CHECKING:
    import faust


def _sasl(settings: CoreSettings | None) -> tuple[str, str, str, str] | None:
    s = settings or get_settings()
    protocol = s.kafka_security_protocol.upper()
    if protocol in {"PLAINTEXT", "SSL"}:
        return None
    password = s.secret("kafka", s.kafka_password)
    if not password:
        raise AlignloopError(
            f"`ALIGNLOOP_KAFKA_PASSWORD` is unset and {s.home / 'secrets' / 'kafka'} does not "
            f"exist: run `alignloop stack up` or set the password of user {s.kafka_username!r}"
        )
    return protocol, s.kafka_sasl_mechanism, s.kafka_username, password


def kafka_auth(settings: CoreSettings | None = None) -> dict[str, Any]:
    """kwargs for kafka-python and aiokafka clients and the SDK's FeedbackClient (all take the same names); on a
    broker without SASL only `security_protocol`, so the SDK does not fall back to its SASL default."""
    sasl = _sasl(settings)
    if sasl is None:
        return {"security_protocol": (settings or get_settings()).kafka_security_protocol.upper()}
    protocol, mechanism, user, password = sasl
    return {
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "sasl_plain_username": user,
        "sasl_plain_password": password,
    }


def faust_credentials(settings: CoreSettings | None = None) -> faust.SASLCredentials | None:
    """`broker_credentials` for a faust App (None on a PLAINTEXT broker)."""
    sasl = _sasl(settings)
    if sasl is None:
        return None
    import faust

    protocol, mechanism, user, password = sasl
    if protocol == "SASL_SSL":
        import ssl

        return faust.SASLCredentials(
            username=user, password=password, mechanism=mechanism, ssl_context=ssl.create_default_context()
        )
    return faust.SASLCredentials(username=user, password=password, mechanism=mechanism)
