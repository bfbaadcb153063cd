"""The SDK's errors, and the root every alignloop error shares (the service's packages hang theirs from it)."""

from __future__ import annotations

from collections.abc import Sequence


class AlignloopError(Exception):
    """Base of every error alignloop raises on purpose; its message is one line for a person."""


class IngestError(AlignloopError):
    """Base of every error the ingest package (the SDK and the gateway) raises on purpose."""


class EventError(IngestError):
    """An event (or a batch body) broke the v1 wire contract.

    `reason` is a stable code: "not_json", "not_utf8", "not_object", "duplicate_key", "too_large",
    "schema", "not_array", "too_many_events". `errors` lists `{"loc": "dotted.path", "msg": "rule; got value"}`.
    """

    def __init__(self, reason: str, errors: list[dict[str, str]]):
        self.reason = reason
        self.errors = errors
        shown = "; ".join(f"{e['loc'] or '(event)'}: {e['msg']}" for e in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"event refused ({reason}): {shown}{more}")


class DeliveryError(IngestError):
    """Kafka (or the gateway) did not acknowledge events; they are not known to be on the topic.

    `failures` lists `(event, cause)` for each such event: re-send the same event (same event_id) to retry.
    """

    def __init__(self, message: str, failures: Sequence[tuple[object, BaseException | None]] | None = None):
        self.failures = list(failures or [])
        super().__init__(message)


class GatewayError(IngestError):
    """The HTTP gateway answered with an error (status, body) or could not be reached."""

    def __init__(self, message: str, status: int | None = None, body: object = None):
        self.status = status
        self.body = body
        super().__init__(message)
