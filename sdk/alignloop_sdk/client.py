"""The Python SDK: send feedback events to Kafka (`FeedbackClient`) or through the gateway (`HttpFeedbackClient`).

    from alignloop_sdk import FeedbackClient
    with FeedbackClient("shop-bot") as feedback:
        feedback.rate(user_id="u-1", prompt="2+2?", response="4", rating="up")

Nothing is dropped silently: each send returns a `Delivery` (a future), an optional `on_error` callback
hears every failure, and `flush()` / `close()` / leaving the `with` block raise `DeliveryError` naming
every event that was not acknowledged since the last flush. Retrying means sending the same event again:
its `event_id` stays, so curation counts it once.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from alignloop_sdk.errors import DeliveryError, EventError, GatewayError
from alignloop_sdk.events import (
    FEEDBACK_TOPIC,
    FeedbackEvent,
    _EventBase,
    encode_event,
    event_key,
    new_event_id,
    parse_event,
    validate_event,
)

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
# the service's stack runs SASL/SCRAM on the client listener; these defaults and the variable names are the
# service's own (alignloop.core.settings), so one environment serves both
DEFAULT_SECURITY_PROTOCOL = "SASL_PLAINTEXT"
DEFAULT_SASL_MECHANISM = "SCRAM-SHA-512"
DEFAULT_KAFKA_USERNAME = "alignloop"


def kafka_security(
    security_protocol: str | None = None,
    sasl_mechanism: str | None = None,
    sasl_plain_username: str | None = None,
    sasl_plain_password: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """kafka-python's login kwargs: each argument, else its `ALIGNLOOP_KAFKA_*` variable, else the default.

    Variables: ALIGNLOOP_KAFKA_SECURITY_PROTOCOL (default SASL_PLAINTEXT; PLAINTEXT for a broker without
    auth), ALIGNLOOP_KAFKA_SASL_MECHANISM (SCRAM-SHA-512), ALIGNLOOP_KAFKA_USERNAME (alignloop),
    ALIGNLOOP_KAFKA_PASSWORD (required with SASL). Raises DeliveryError naming what is missing."""
    env = os.environ if env is None else env
    protocol = (security_protocol or env.get("ALIGNLOOP_KAFKA_SECURITY_PROTOCOL") or DEFAULT_SECURITY_PROTOCOL).upper()
    if not protocol.startswith("SASL_"):
        return {"security_protocol": protocol}
    password = sasl_plain_password or env.get("ALIGNLOOP_KAFKA_PASSWORD")
    if not password:
        raise DeliveryError(
            f"`sasl_plain_password` (or ALIGNLOOP_KAFKA_PASSWORD) is required with security_protocol "
            f"{protocol!r}; got none (security_protocol='PLAINTEXT' for a broker without auth)"
        )
    return {
        "security_protocol": protocol,
        "sasl_mechanism": sasl_mechanism or env.get("ALIGNLOOP_KAFKA_SASL_MECHANISM") or DEFAULT_SASL_MECHANISM,
        "sasl_plain_username": (sasl_plain_username or env.get("ALIGNLOOP_KAFKA_USERNAME") or DEFAULT_KAFKA_USERNAME),
        "sasl_plain_password": password,
    }


OnError = Callable[[FeedbackEvent, BaseException], None]


class _EventBuilder:
    """rate / edit / compare: build a v1 event for this client's app, then `send` it."""

    app_id: str

    def send(self, event: FeedbackEvent | Mapping[str, Any]):  # pragma: no cover - overridden
        raise NotImplementedError

    def _build(
        self, kind: str, fields: dict[str, Any], common: dict[str, Any], feedback_token: str | None = None
    ) -> FeedbackEvent:
        if feedback_token is not None:
            common["feedback_token"] = feedback_token
        data: dict[str, Any] = {
            "schema_version": 1,
            "kind": kind,
            "app_id": self.app_id,
            "event_id": common.pop("event_id", None) or new_event_id(),
            "occurred_at": common.pop("occurred_at", None) or datetime.now(UTC),
        }
        data.update({k: v for k, v in common.items() if v is not None})
        data.update(fields)
        return validate_event(data)

    def _send_built(self, kind: str, fields: dict[str, Any], common: dict[str, Any], feedback_token: str | None = None):
        end_user_ip = common.pop("end_user_ip", None)
        event = self._build(kind, fields, common, feedback_token)
        return self.send(event) if end_user_ip is None else self._send_for_end_user(event, end_user_ip)

    def _send_for_end_user(self, event: FeedbackEvent, address: str):
        raise EventError(
            "schema",
            [
                {
                    "loc": "end_user_ip",
                    "msg": "the Kafka SDK sends no raw address: pass "
                    "client={'ip_hash': alignloop_sdk.sources.source_hash(key, address)} with the "
                    "gateway's source key, or send through the gateway (HttpFeedbackClient)",
                }
            ],
        )

    def rate(
        self,
        *,
        user_id: str,
        prompt: str | Sequence[Mapping[str, str]],
        response: str,
        rating: str,
        feedback_token: str | None = None,
        **common: Any,
    ):
        """Thumbs `"up"` or `"down"` on one answer. `feedback_token`: the one serving returned with the answer
        (only feedback with a valid token counts for a canary). `common`: session_id, response_id,
        adapter_version, client, metadata, event_id, occurred_at, and (HttpFeedbackClient) end_user_ip: the end
        user's address, which the gateway hashes into client.ip_hash. Raises EventError before sending if a rule
        breaks."""
        return self._send_built(
            "rating",
            {"user_id": user_id, "prompt": prompt, "response": response, "rating": rating},
            common,
            feedback_token,
        )

    def edit(
        self,
        *,
        user_id: str,
        prompt: str | Sequence[Mapping[str, str]],
        response: str,
        edited: str,
        feedback_token: str | None = None,
        **common: Any,
    ):
        """The user rewrote `response` into `edited` (preferred)."""
        return self._send_built(
            "edit",
            {"user_id": user_id, "prompt": prompt, "response": response, "edited": edited},
            common,
            feedback_token,
        )

    def compare(
        self,
        *,
        user_id: str,
        prompt: str | Sequence[Mapping[str, str]],
        responses: Sequence[str],
        chosen: int | None,
        feedback_token: str | None = None,
        **common: Any,
    ):
        """A side-by-side choice: `chosen` is 0 or 1, or None for a tie (`feedback_token`: the first answer's)."""
        return self._send_built(
            "comparison",
            {"user_id": user_id, "prompt": prompt, "responses": list(responses), "chosen": chosen},
            common,
            feedback_token,
        )

    def _coerce(self, event: FeedbackEvent | Mapping[str, Any]) -> FeedbackEvent:
        if not isinstance(event, _EventBase):
            event = parse_event(event)
        if event.app_id != self.app_id:
            raise EventError(
                "schema", [{"loc": "app_id", "msg": f"must be this client's app {self.app_id!r}; got {event.app_id!r}"}]
            )
        return event


def _repair_idempotent_reset(producer: Any) -> None:
    """Work around kafka-python 3.0.12: after a sent batch expires (an outage longer than delivery_timeout_ms),
    the idempotent producer drops its producer id but stays READY, so it never asks for a new one and
    every later event hangs, neither acknowledged nor failed. The Java client moves back to UNINITIALIZED
    (TransactionManager.resetIdempotentProducerId); this does the same, so the sender fetches a new id.
    """
    tm = getattr(producer, "_transaction_manager", None)
    if tm is None or tm.is_transactional() or not hasattr(tm, "reset_producer_id"):
        return
    from kafka.producer.transaction_manager import TransactionState

    original = tm.reset_producer_id

    def reset_producer_id() -> None:
        original()
        with tm._lock:
            tm._current_state = TransactionState.UNINITIALIZED

    tm.reset_producer_id = reset_producer_id


def _memo_partitioner(size: int = 65_536):
    """kafka-python's default partitioner (murmur2 of the key, Java-compatible) that remembers each key's
    partition for the topic's current partition count: a conversation's key comes back with every event, and
    murmur2 in pure Python is about a tenth of a send's cost. Bounded: cleared when full."""
    from kafka.partitioner import DefaultPartitioner

    class MemoPartitioner(DefaultPartitioner):
        def __init__(self) -> None:
            self._memo: dict[tuple[str, int, bytes], int] = {}

        def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
            parts = cluster.partitions_for_topic(topic) if serialized_key is not None else None
            if not parts:
                return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            memo_key = (topic, len(parts), serialized_key)
            hit = self._memo.get(memo_key)
            if hit is None:
                if len(self._memo) >= size:
                    self._memo.clear()
                hit = self._memo[memo_key] = super().partition(
                    topic, key, serialized_key, value, serialized_value, cluster
                )
            return hit

    return MemoPartitioner()


class Delivery:
    """The pending acknowledgement of one event: a future resolving to where Kafka stored it."""

    __slots__ = ("_future", "event")

    def __init__(self, event: FeedbackEvent, future: Any):
        self.event = event
        self._future = future

    @property
    def event_id(self) -> str:
        return str(self.event.event_id)

    def done(self) -> bool:
        return self._future.is_done

    def succeeded(self) -> bool:
        return self._future.is_done and self._future.exception is None

    def result(self, timeout: float | None = None) -> Any:
        """Kafka's RecordMetadata (topic, partition, offset) once acknowledged; raises DeliveryError otherwise."""
        try:
            return self._future.get(timeout=timeout)
        except Exception as exc:
            raise DeliveryError(
                f"event {self.event_id} was not acknowledged by Kafka: {exc!r}", [(self.event, exc)]
            ) from exc

    def add_done_callback(self, fn: Callable[[Delivery], None]) -> None:
        """Call `fn(delivery)` once acknowledged or failed (on the producer's I/O thread: keep it short)."""
        self._future.add_both(lambda _value: fn(self))


class FeedbackClient(_EventBuilder):
    """Feedback into Kafka through an acks=all idempotent producer; the key keeps a conversation in one partition.

    `delivery_timeout_ms` bounds how long an event may wait for Kafka (retries included) before it fails
    and is reported; the default rides out a broker restart of a minute or so. The login (`security_protocol`,
    `sasl_mechanism`, `sasl_plain_username`, `sasl_plain_password`) is taken as `kafka_security` says:
    each argument, else its ALIGNLOOP_KAFKA_* variable, else SCRAM-SHA-512 as user `alignloop`.
    """

    def __init__(
        self,
        app_id: str,
        bootstrap: str | None = None,
        *,
        topic: str | None = None,
        on_error: OnError | None = None,
        linger_ms: int = 5,
        batch_size: int = 64 * 1024,
        delivery_timeout_ms: int = 120_000,
        max_block_ms: int = 10_000,
        security_protocol: str | None = None,
        sasl_mechanism: str | None = None,
        sasl_plain_username: str | None = None,
        sasl_plain_password: str | None = None,
        **producer_config: Any,
    ):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        login = kafka_security(security_protocol, sasl_mechanism, sasl_plain_username, sasl_plain_password)
        # the same variables the service reads (alignloop.core.settings, ingest.settings), without importing it
        bootstrap = bootstrap or os.environ.get("ALIGNLOOP_KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP)
        topic = topic or os.environ.get("ALIGNLOOP_INGEST_TOPIC", FEEDBACK_TOPIC)
        self.app_id = app_id
        self.topic = topic
        self._on_error = on_error
        self._failed: list[tuple[FeedbackEvent, BaseException]] = []
        # without on_error, sent events wait here (oldest first) until their future settles: a failure is
        # collected from here for flush() instead of through an errback per event, which costs a lock that
        # the producer's I/O thread contends for on every send
        self._pending: deque[tuple[FeedbackEvent, Any]] = deque()
        self._lock = threading.Lock()
        config = {
            **login,
            "acks": "all",
            "enable_idempotence": True,
            "retries": 2**31 - 1,
            "linger_ms": linger_ms,
            "batch_size": batch_size,
            "delivery_timeout_ms": delivery_timeout_ms,
            "request_timeout_ms": min(30_000, max(1000, delivery_timeout_ms - linger_ms - 1)),
            "max_block_ms": max_block_ms,
            "max_in_flight_requests_per_connection": 5,
            "client_id": f"alignloop-sdk-{app_id}",
            "partitioner": _memo_partitioner(),
            **producer_config,
        }
        try:
            self._producer = KafkaProducer(bootstrap_servers=bootstrap, **config)
        except KafkaError as exc:
            raise DeliveryError(f"no Kafka producer for {bootstrap}: {exc!r}") from exc
        _repair_idempotent_reset(self._producer)

    def send(self, event: FeedbackEvent | Mapping[str, Any]) -> Delivery:
        """Queue one event (a model or its JSON mapping); returns its Delivery. Raises EventError for a bad
        event and DeliveryError when the producer cannot even queue it (e.g. no metadata within max_block_ms)."""
        from kafka.errors import KafkaError

        event = self._coerce(event)
        try:
            future = self._producer.send(self.topic, encode_event(event), event_key(event))
        except (KafkaError, AssertionError, ValueError, TypeError) as exc:
            raise DeliveryError(
                f"event {event.event_id} could not be queued for Kafka: {exc!r}", [(event, exc)]
            ) from exc
        if self._on_error is not None:
            future.add_errback(self._failure, event)
        else:
            with self._lock:
                self._pending.append((event, future))
                self._collect_settled(everything=False)
        return Delivery(event, future)

    def _collect_settled(self, *, everything: bool) -> None:
        """Drop acknowledged events from the pending queue, keeping failures for raise_failures (under the lock).

        On every send only the settled ones at the front leave (cheap; futures settle about in order);
        `everything` scans the whole queue."""
        pending = self._pending
        if everything:
            settled = [(e, f) for e, f in pending if f.is_done]
            self._pending = deque((e, f) for e, f in pending if not f.is_done)
        else:
            settled = []
            while pending and pending[0][1].is_done:
                settled.append(pending.popleft())
        self._failed.extend((e, f.exception) for e, f in settled if f.exception is not None)

    def _failure(self, event: FeedbackEvent, exc: BaseException) -> None:
        with self._lock:
            self._failed.append((event, exc))
        if self._on_error is not None:
            self._on_error(event, exc)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued event is acknowledged or failed; raise DeliveryError naming the failures."""
        from kafka.errors import KafkaTimeoutError

        try:
            self._producer.flush(timeout=timeout)
        except KafkaTimeoutError as exc:
            raise DeliveryError(
                f"events still unacknowledged after {timeout} s; they may yet be delivered or fail (see each Delivery)"
            ) from exc
        self.raise_failures()

    def raise_failures(self) -> None:
        """Raise DeliveryError for failures seen since the last call (flush calls it); else return."""
        with self._lock:
            self._collect_settled(everything=True)
            failed, self._failed = self._failed, []
        if failed:
            ids = ", ".join(str(e.event_id) for e, _ in failed[:3])
            raise DeliveryError(
                f"{len(failed)} event(s) not acknowledged by Kafka (e.g. {ids}); first cause: {failed[0][1]!r}", failed
            )

    def close(self, timeout: float | None = None) -> None:
        """Flush, then close the producer; raises DeliveryError when something was not acknowledged."""
        try:
            self.flush(timeout)
        finally:
            self._producer.close(timeout=timeout)

    def __enter__(self) -> FeedbackClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class HttpDelivery:
    """The pending acknowledgement of one event sent through the gateway."""

    __slots__ = ("_callbacks", "_done", "_error", "body", "event")

    def __init__(self, event: FeedbackEvent, body: bytes):
        self.event = event
        self.body = body  # what is posted: the encoded event, with the end user's `client.ip` if one was given
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[HttpDelivery], None]] = []

    @property
    def event_id(self) -> str:
        return str(self.event.event_id)

    def done(self) -> bool:
        return self._done.is_set()

    def succeeded(self) -> bool:
        return self._done.is_set() and self._error is None

    def _settle(self, error: BaseException | None) -> None:
        self._error = error
        self._done.set()
        for fn in self._callbacks:
            fn(self)

    def result(self, timeout: float | None = None) -> None:
        """Return once the gateway acknowledged the event; raise DeliveryError/EventError otherwise."""
        if not self._done.wait(timeout):
            raise DeliveryError(
                f"event {self.event_id} not acknowledged yet (still queued: call flush())", [(self.event, None)]
            )
        if self._error is not None:
            raise self._error

    def add_done_callback(self, fn: Callable[[HttpDelivery], None]) -> None:
        if self._done.is_set():
            fn(self)
        else:
            self._callbacks.append(fn)


def _with_end_user_ip(event: FeedbackEvent, body: bytes, address: str) -> bytes:
    import json

    from alignloop_sdk.sources import parse_end_user_ip

    try:
        parse_end_user_ip(address)
    except ValueError as exc:
        raise EventError("schema", [{"loc": "end_user_ip", "msg": str(exc)}]) from None
    if event.client is not None and event.client.ip_hash is not None:
        raise EventError(
            "schema",
            [{"loc": "client.ip_hash", "msg": "is set by the gateway from `end_user_ip`; give one or the other"}],
        )
    data = json.loads(body)
    data["client"] = {**(data.get("client") or {}), "ip": address}
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class HttpFeedbackClient(_EventBuilder):
    """The same methods over the HTTP gateway: events are posted in batches of `batch_size` (and on flush).

    A 503 or a connection error is retried `retries` times with the same event ids; an event the gateway
    refuses (422) fails its Delivery with EventError and the valid rest of the batch is posted again.
    """

    def __init__(
        self,
        app_id: str,
        base_url: str,
        api_key: str,
        *,
        batch_size: int = 100,
        timeout: float = 10.0,
        retries: int = 5,
        backoff_s: float = 0.2,
        on_error: OnError | None = None,
        transport: Any = None,
    ):
        import httpx

        self.app_id = app_id
        self.batch_size = max(1, min(batch_size, 1000))
        self.retries = retries
        self.backoff_s = backoff_s
        self._on_error = on_error
        self._pending: list[HttpDelivery] = []
        self._failed: list[tuple[FeedbackEvent, BaseException]] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        )

    def send(self, event: FeedbackEvent | Mapping[str, Any], *, end_user_ip: str | None = None) -> HttpDelivery:
        """Queue one event; `end_user_ip` is the end user's address, hashed by the gateway (never stored)."""
        event = self._coerce(event)
        body = encode_event(event)  # size check before queueing
        if end_user_ip is not None:
            body = _with_end_user_ip(event, body, end_user_ip)
        delivery = HttpDelivery(event, body)
        with self._lock:
            self._pending.append(delivery)
            full = len(self._pending) >= self.batch_size
        if full:
            self._post_pending()
        return delivery

    def _send_for_end_user(self, event: FeedbackEvent, address: str) -> HttpDelivery:
        return self.send(event, end_user_ip=address)

    def _post_pending(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        while batch:
            chunk, batch = batch[: self.batch_size], batch[self.batch_size :]
            self._post(chunk)

    def _fail(self, delivery: HttpDelivery, error: BaseException) -> None:
        with self._lock:
            self._failed.append((delivery.event, error))
        delivery._settle(error)
        if self._on_error is not None:
            self._on_error(delivery.event, error)

    def _post(self, chunk: list[HttpDelivery]) -> None:
        import httpx

        attempt = 0
        error: Exception | None = None
        while chunk:
            body = b"[" + b",".join(d.body for d in chunk) + b"]"
            try:
                response = self._http.post("/v1/events", content=body)
            except httpx.HTTPError as exc:
                response, error = None, exc
            if response is not None and response.status_code == 200:
                for d in chunk:
                    d._settle(None)
                return
            if response is not None and response.status_code == 422:
                results = response.json().get("results", [])
                refused = {r["index"]: r for r in results if r.get("status") == "refused"}
                if not refused:  # the whole body was refused: every event fails with the same reason
                    err = GatewayError(f"gateway refused the batch: {response.text[:300]}", 422, response.json())
                    for d in chunk:
                        self._fail(d, err)
                    return
                for i, d in enumerate(chunk):
                    if i in refused:
                        self._fail(d, EventError(refused[i].get("reason", "schema"), refused[i].get("errors", [])))
                chunk = [d for i, d in enumerate(chunk) if i not in refused]
                continue
            if response is not None and response.status_code != 503:
                err = GatewayError(
                    f"gateway answered {response.status_code}: {response.text[:300]}",
                    response.status_code,
                    response.text,
                )
                for d in chunk:
                    self._fail(d, err)
                return
            if response is not None:  # 503: Kafka did not acknowledge (some of) them
                acked = {r["index"] for r in response.json().get("results", []) if r.get("status") == "accepted"}
                for i, d in enumerate(chunk):
                    if i in acked:
                        d._settle(None)
                chunk = [d for i, d in enumerate(chunk) if i not in acked]
                error = GatewayError(f"gateway answered 503: {response.text[:200]}", 503)
                wait = float(response.headers.get("Retry-After", self.backoff_s))
            else:
                wait = self.backoff_s * 2**attempt
            attempt += 1
            if attempt > self.retries:
                for d in chunk:
                    self._fail(
                        d,
                        DeliveryError(
                            f"event {d.event_id} not acknowledged after {self.retries} retries: {error!r}",
                            [(d.event, error)],
                        ),
                    )
                return
            time.sleep(min(wait, 30.0))

    def flush(self, timeout: float | None = None) -> None:
        """Post every queued event; raise DeliveryError naming each event not acknowledged since the last flush."""
        self._post_pending()
        with self._lock:
            failed, self._failed = self._failed, []
        if failed:
            ids = ", ".join(str(e.event_id) for e, _ in failed[:3])
            raise DeliveryError(
                f"{len(failed)} event(s) not acknowledged by the gateway (e.g. {ids}); first cause: {failed[0][1]}",
                failed,
            )

    def close(self, timeout: float | None = None) -> None:
        try:
            self.flush(timeout)
        finally:
            self._http.close()

    def __enter__(self) -> HttpFeedbackClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
