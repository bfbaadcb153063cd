"""The HTTP gateway: `POST /v1/events` (one event or an array of up to 1,000) into Kafka, with per-app API keys.

Answers: 200 once Kafka acknowledged every event; 401 without a valid key; 403 for an event of another
app; 413 past a size limit; 422 naming each refused event's field paths (nothing of that body is sent);
503 with Retry-After when Kafka did not acknowledge in time (never a 2xx for an unacknowledged event).

The end user's source is what the app says it is: `client.ip` in an event, or the X-Alignloop-End-User-IP
header on a single-event request, hashed here into `client.ip_hash` with a keyed HMAC (the address itself
is dropped). The connection's own peer is never a source: an app calls from its backend, so its peer is
the app, not its user.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from alignloop.core.hashed import LookupCache
from alignloop.core.kafka_auth import kafka_auth
from ingest.errors import EventError
from ingest.events import (
    MAX_EVENT_BYTES,
    decode_json,
    encode_event,
    event_json_schema,
    event_key,
    validate_event,
)
from ingest.sources import END_USER_IP_HEADER, source_hash

log = logging.getLogger("ingest.gateway")


@dataclass
class GatewayConfig:
    """What one gateway needs; `serve` builds it from the settings, tests build it directly."""

    bootstrap: str
    topic: str
    find_app: Callable[[str], str | None]  # API key -> app_id (None: unknown or revoked); may block
    source_key: bytes  # HMAC key of client.ip_hash
    partitions: int = 6
    max_batch: int = 1000
    max_body_bytes: int = 16 * 1024 * 1024
    produce_timeout_s: float = 5.0
    retry_after_s: int = 5
    key_cache_s: float = 5.0
    linger_ms: int = 1
    ensure_topics: bool = True
    producer_config: dict[str, Any] = field(default_factory=dict)


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.accepted = Counter(
            "alignloop_ingest_events_accepted", "events acknowledged by Kafka", ["app_id"], registry=self.registry
        )
        self.refused = Counter(
            "alignloop_ingest_events_refused", "events or bodies refused, by reason", ["reason"], registry=self.registry
        )
        self.requests = Counter(
            "alignloop_ingest_requests", "POST /v1/events answers, by status", ["status"], registry=self.registry
        )
        self.produce_latency = Histogram(
            "alignloop_ingest_produce_latency_seconds",
            "from handing a request's events to the producer to Kafka's acknowledgement of all of them",
            registry=self.registry,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


class _Producer:
    """An aiokafka acks=all idempotent producer, started on first need so the gateway outlives a broker outage."""

    def __init__(self, cfg: GatewayConfig):
        self.cfg = cfg
        self._auth = kafka_auth()  # here, so a gateway without the Kafka password stops at start, not per request
        self._producer = None
        self._lock = asyncio.Lock()

    async def get(self):
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                from aiokafka import AIOKafkaProducer

                producer = AIOKafkaProducer(
                    bootstrap_servers=self.cfg.bootstrap,
                    **self._auth,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=self.cfg.linger_ms,
                    max_batch_size=256 * 1024,
                    request_timeout_ms=max(1000, int(self.cfg.produce_timeout_s * 1000)),
                    client_id="alignloop-gateway",
                    **self.cfg.producer_config,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
        return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def _error(status: int, reason: str, errors: list[dict[str, str]], **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse({"reason": reason, "errors": errors, **extra}, status_code=status, headers=headers)


def _prefixed(prefix: str, errors: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"loc": ".".join(p for p in (prefix, e["loc"]) if p) or "body", "msg": e["msg"]} for e in errors]


_HEADER_LOC = "header." + END_USER_IP_HEADER.lower()


class _Refused(Exception):
    """A request refused before anything reached Kafka: the answer's status, reason, errors and body.

    `counts` names the refusal reasons the metrics count (one per refused event for a batch; the
    reason itself otherwise).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        errors: list[dict[str, str]],
        *,
        counts: list[str] | None = None,
        headers: dict[str, str] | None = None,
        **body: Any,
    ) -> None:
        super().__init__(reason)
        self.status, self.reason, self.errors, self.headers, self.body = status, reason, errors, headers, body
        self.counts = [reason] if counts is None else counts

    def response(self) -> JSONResponse:
        return _error(self.status, self.reason, self.errors, headers=self.headers, **self.body)


def api_key(request: Request) -> str:
    """The request's API key: `Authorization: Bearer ...` or `X-API-Key` ("" when neither)."""
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) once it is past `limit` bytes, declared or streamed."""
    refusal = _Refused(413, "too_large", [{"loc": "body", "msg": f"a body must be at most {limit} bytes"}])
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise refusal
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise refusal
        chunks.append(chunk)
    return b"".join(chunks)


def decode_body(raw: bytes, max_batch: int) -> tuple[list[Any], bool]:
    """(items, batch): the JSON body as a list of event bodies and whether it was an array; refused when the
    size or the shape is wrong (a single event past MAX_EVENT_BYTES, bad JSON, an empty or too long array)."""
    if len(raw) > MAX_EVENT_BYTES and raw.lstrip()[:1] != b"[":
        raise _Refused(
            413,
            "too_large",
            [{"loc": "body", "msg": f"an event must be at most {MAX_EVENT_BYTES} bytes; got {len(raw)}"}],
        )
    try:
        data = decode_json(raw, limit=None)
    except EventError as exc:
        raise _Refused(422, exc.reason, _prefixed("body", exc.errors)) from None
    batch = isinstance(data, list)
    items = data if batch else [data]
    if batch and not items:
        raise _Refused(
            422, "empty_batch", [{"loc": "body", "msg": f"an array must hold 1 to {max_batch} events; got 0"}]
        )
    if len(items) > max_batch:
        raise _Refused(
            413,
            "too_many_events",
            [{"loc": "body", "msg": f"an array must hold at most {max_batch} events; got {len(items)}"}],
        )
    return items, batch


def check_app(items: list[Any], batch: bool, app_id: str) -> None:
    """Refused (403) when an event names an app other than the key's."""
    foreign = [
        i
        for i, d in enumerate(items)
        if isinstance(d, dict) and isinstance(d.get("app_id"), str) and d["app_id"] != app_id
    ]
    if foreign:
        raise _Refused(
            403,
            "forbidden_app",
            [
                {
                    "loc": f"{i}.app_id" if batch else "app_id",
                    "msg": f"must be this key's app {app_id!r}; got {items[i]['app_id']!r}",
                }
                for i in foreign[:20]
            ],
        )


def validate_items(
    items: list[Any], batch: bool, header_ip: str | None, source_key: bytes
) -> tuple[list[tuple[bytes, bytes]], list[dict[str, Any]]]:
    """(encoded (value, key) pairs, per-event results) of valid events; refused (422, or 413 when an event is
    too large) naming every refused event's field paths when any event is invalid: nothing of it is sent."""
    if header_ip is not None and batch:
        raise _Refused(
            422,
            "schema",
            [
                {
                    "loc": _HEADER_LOC,
                    "msg": "is for a single-event body; in an array give each event's end-user address as `client.ip`",
                }
            ],
        )
    encoded: list[tuple[bytes, bytes]] = []
    results: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    reasons: list[str] = []
    for i, item in enumerate(items):
        try:
            event = validate_event(with_end_user_source(item, header_ip, source_key))
            encoded.append((encode_event(event), event_key(event)))
            results.append({"index": i, "status": "valid", "event_id": str(event.event_id)})
        except EventError as exc:
            reasons.append(exc.reason)
            errors.extend(_prefixed(str(i) if batch else "", exc.errors))
            results.append({"index": i, "status": "refused", "reason": exc.reason, "errors": exc.errors})
    if errors:
        too_large = "too_large" in reasons
        body: dict[str, Any] = {"accepted": 0, "refused": len(reasons)}
        if batch:
            body["results"] = results
        raise _Refused(
            413 if too_large else 422, "too_large" if too_large else "schema", errors, counts=reasons, **body
        )
    return encoded, results


class _Gateway:
    """One gateway's state (producer, metrics, API key cache, Kafka's health) and a request's steps:
    auth -> read -> decode -> validate -> produce."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.producer = _Producer(cfg)
        self.metrics = _Metrics()
        self.keys: LookupCache[str | None] = LookupCache(cfg.key_cache_s)  # API key -> app_id
        self.kafka = "unknown"

    async def post_events(self, request: Request) -> JSONResponse:
        try:
            app_id = await self.authenticate(request)
            raw = await read_body(request, self.cfg.max_body_bytes)
            items, batch = decode_body(raw, self.cfg.max_batch)
            check_app(items, batch, app_id)
            encoded, results = validate_items(
                items, batch, request.headers.get(END_USER_IP_HEADER), self.cfg.source_key
            )
        except _Refused as refusal:
            for reason in refusal.counts:
                self.metrics.refused.labels(reason).inc()
            return self.answer(refusal.response())
        return self.answer(await self.produce(app_id, encoded, results, batch))

    async def authenticate(self, request: Request) -> str:
        """The key's app_id (cached for key_cache_s); refused (401) without a valid key."""
        key = api_key(request)
        app_id = await self.find_app(key) if key else None
        if app_id is None:
            raise _Refused(
                401,
                "unauthorized",
                [
                    {
                        "loc": "header.authorization",
                        "msg": "a valid API key is required: `Authorization: Bearer alk_...` or `X-API-Key`",
                    }
                ],
                headers={"WWW-Authenticate": "Bearer"},
            )
        return app_id

    async def find_app(self, key: str) -> str | None:
        fresh, app_id = self.keys.cached(key)
        if not fresh:
            app_id = await run_in_threadpool(self.cfg.find_app, key)
            self.keys.put(key, app_id)
        return app_id

    async def produce(
        self, app_id: str, encoded: list[tuple[bytes, bytes]], results: list[dict[str, Any]], batch: bool
    ) -> JSONResponse:
        """Send the events; 200 once Kafka acknowledged all of them, else 503 with Retry-After."""
        started = time.perf_counter()
        acked = await _produce(self.producer, self.cfg, encoded)
        self.metrics.produce_latency.observe(time.perf_counter() - started)
        for r, ok in zip(results, acked):
            r["status"] = "accepted" if ok else "not_acknowledged"
        n_ok = sum(acked)
        if n_ok:
            self.metrics.accepted.labels(app_id).inc(n_ok)
        if n_ok < len(acked):
            self.kafka = "not acknowledging"
            self.metrics.refused.labels("kafka_unavailable").inc(len(acked) - n_ok)
            return _error(
                503,
                "kafka_unavailable",
                [
                    {
                        "loc": f"{r['index']}" if batch else "body",
                        "msg": "not acknowledged by Kafka "
                        f"within {self.cfg.produce_timeout_s} s; retry with the same event_id",
                    }
                    for r in results
                    if r["status"] != "accepted"
                ][:20],
                accepted=n_ok,
                results=results,
                headers={"Retry-After": str(self.cfg.retry_after_s)},
            )
        self.kafka = "ok"
        return JSONResponse({"accepted": n_ok, "results": results})

    def answer(self, response: JSONResponse) -> JSONResponse:
        self.metrics.requests.labels(str(response.status_code)).inc()
        return response

    async def healthz(self) -> JSONResponse:
        if self.kafka != "ok":
            try:
                await asyncio.wait_for(self.producer.get(), timeout=2)
                self.kafka = "ok"
            except Exception as exc:
                self.kafka = f"unreachable: {exc!r}"
        ok = self.kafka == "ok"
        return JSONResponse(
            {"status": "ok" if ok else "degraded", "kafka": self.kafka, "topic": self.cfg.topic},
            status_code=200 if ok else 503,
        )

    async def prometheus(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        if self.cfg.ensure_topics:
            from ingest.topics import ensure_topics

            try:
                await run_in_threadpool(ensure_topics, self.cfg.bootstrap, self.cfg.partitions, base=self.cfg.topic)
                await self.producer.get()
                self.kafka = "ok"
            except Exception as exc:  # keep serving: requests answer 503 until Kafka is back
                self.kafka = f"unreachable: {exc!r}"
                log.warning("Kafka not ready at start-up: %r", exc)
        # what start-up built (modules, models, the app) lives as long as the process: keeping it out of the
        # cyclic collector's scans makes the collections that requests trigger short (fewer latency spikes)
        gc.collect()
        gc.freeze()
        yield
        await self.producer.stop()


def _post_events_doc(max_batch: int) -> dict[str, Any]:
    """The OpenAPI description of POST /v1/events: its header, its body and its answers."""
    return {
        "summary": "Send one feedback event or an array of up to 1,000",
        "openapi_extra": {
            "parameters": [
                {
                    "name": END_USER_IP_HEADER,
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "a single-event body's end-user address (IPv4 or IPv6), as `client.ip` would "
                    "give it; hashed into client.ip_hash, never stored",
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "anyOf": [
                                {"$ref": "#/components/schemas/FeedbackEventV1"},
                                {
                                    "type": "array",
                                    "maxItems": max_batch,
                                    "items": {"$ref": "#/components/schemas/FeedbackEventV1"},
                                },
                            ]
                        }
                    }
                },
            },
        },
        "responses": {
            200: {"description": "every event acknowledged by Kafka"},
            401: {"description": "no valid API key"},
            403: {"description": "an event's app_id is not the key's app"},
            413: {"description": "body, event or text past its size limit"},
            422: {"description": "refused events, each with field paths and rules; nothing sent"},
            503: {"description": "Kafka did not acknowledge; retry after Retry-After seconds"},
        },
    }


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI schema with the event model's JSON Schema as its components (client.ip in, ip_hash out)."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    event = event_json_schema()
    defs = event.pop("$defs", {})
    for key in ("$schema", "$id"):
        event.pop(key, None)
    client = defs.get("ClientInfo", {}).get("properties", {})
    client.pop("ip_hash", None)  # the gateway sets it; an app sends the address it is made from
    client["ip"] = {
        "type": "string",
        "description": "the end user's IPv4 or IPv6 address; the gateway hashes "
        "it into client.ip_hash (HMAC-SHA256, IPv6 by /64) and never stores or forwards it",
    }
    text = json.dumps({"FeedbackEventV1": event, **defs}).replace("#/$defs/", "#/components/schemas/")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(json.loads(text))
    app.openapi_schema = schema
    return schema


def create_app(cfg: GatewayConfig) -> FastAPI:
    """The gateway as an ASGI app (run it with uvicorn; `alignloop ingest serve` does)."""
    gateway = _Gateway(cfg)
    app = FastAPI(title="alignloop ingest gateway", version="1", lifespan=gateway.lifespan, description=__doc__)
    app.post("/v1/events", **_post_events_doc(cfg.max_batch))(gateway.post_events)
    app.get("/healthz", summary="Liveness, and whether Kafka acknowledged the last writes")(gateway.healthz)
    app.get("/metrics", summary="Prometheus metrics")(gateway.prometheus)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.state.metrics = gateway.metrics
    return app


def with_end_user_source(item: Any, header_ip: str | None, key: bytes) -> Any:
    """An event body with `client.ip` (or the header's address) replaced by its keyed hash in `client.ip_hash`.

    No address, no source: the event goes on without one. An app may not set `client.ip_hash` itself (it
    could put anything there, a raw address included). Errors name the field and the rule, never the address.
    """
    if not isinstance(item, dict) or not isinstance(item.get("client"), dict | None):
        return item  # validation names what is wrong
    client = dict(item.get("client") or {})
    if "ip_hash" in client:
        raise EventError(
            "schema",
            [
                {
                    "loc": "client.ip_hash",
                    "msg": "is set by the gateway; send the end user's "
                    f"address as `client.ip` or in the {END_USER_IP_HEADER} header",
                }
            ],
        )
    address, loc = client.pop("ip", None), "client.ip"
    if header_ip is not None:
        if address is not None:
            raise EventError(
                "schema",
                [
                    {
                        "loc": _HEADER_LOC,
                        "msg": "give the end user's address once: in this header or in `client.ip`, not both",
                    }
                ],
            )
        address, loc = header_ip, _HEADER_LOC
    if address is None:
        return item if item.get("client") is None else {**item, "client": client}
    try:
        client["ip_hash"] = source_hash(key, address)
    except ValueError as exc:
        raise EventError("schema", [{"loc": loc, "msg": f"{exc} (the end user's; hashed, never stored)"}]) from None
    return {**item, "client": client}


async def _produce(producer: _Producer, cfg: GatewayConfig, encoded: list[tuple[bytes, bytes]]) -> list[bool]:
    """Send every (value, key); True where Kafka acknowledged within the produce timeout."""
    deadline = time.monotonic() + cfg.produce_timeout_s
    futures: list[asyncio.Future | None] = [None] * len(encoded)
    try:
        async with asyncio.timeout(cfg.produce_timeout_s):
            p = await producer.get()
            if len(encoded) == 1:  # one event: the producer's own send is cheaper than a batch
                value, key = encoded[0]
                futures[0] = await p.send(cfg.topic, value=value, key=key)
            else:
                await _send_batches(p, cfg.topic, encoded, futures)
    except Exception as exc:  # timeouts and Kafka errors alike: what was not acknowledged is reported
        log.warning("producing to %s failed: %r", cfg.topic, exc)
    pending = list({id(f): f for f in futures if f is not None and not f.done()}.values())
    if pending:
        await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
    return [f is not None and f.done() and not f.cancelled() and f.exception() is None for f in futures]


async def _send_batches(p, topic: str, encoded: list[tuple[bytes, bytes]], futures: list) -> None:
    """One producer batch per partition (a future per batch, not per event): the batched path's CPU is per event.

    Each key goes to the partition the producer's own default partitioner gives it (murmur2, as the SDK's
    kafka-python producer does), so one conversation stays in one partition whichever way it arrives.
    """
    from aiokafka.partitioner import DefaultPartitioner

    partitions = sorted(await p.partitions_for(topic))
    partitioner = DefaultPartitioner()
    groups: dict[int, list[int]] = {}
    for i, (_value, key) in enumerate(encoded):
        groups.setdefault(partitioner(key, partitions, partitions), []).append(i)
    for partition, indexes in groups.items():
        while indexes:
            builder, taken = p.create_batch(), []
            for i in indexes:
                value, key = encoded[i]
                if builder.append(key=key, value=value, timestamp=None) is None:
                    break  # full: the rest go in the next batch
                taken.append(i)
            if not taken:
                raise ValueError(f"event {indexes[0]} does not fit in an empty producer batch")
            future = await p.send_batch(builder, topic, partition=partition)
            for i in taken:
                futures[i] = future
            indexes = indexes[len(taken) :]


def build_config(*, bootstrap: str | None = None, store_url: str | None = None, **overrides: Any) -> GatewayConfig:
    """A GatewayConfig from the core and ingest settings, the API keys read from the store."""
    from alignloop.core.db import open_store, session_scope
    from alignloop.core.settings import get_settings as core_settings
    from ingest.migrations import FOLDER
    from ingest.settings import get_settings, load_source_key
    from ingest.store import find_app_for_key

    core, s = core_settings(), get_settings()
    engine = open_store(store_url or core.resolved_store_url, branches=[FOLDER])

    def find_app(key: str) -> str | None:
        with session_scope(engine) as session:
            return find_app_for_key(session, key)

    values: dict[str, Any] = dict(
        bootstrap=bootstrap or core.kafka_bootstrap,
        topic=s.topic,
        find_app=find_app,
        source_key=load_source_key(s, core.home),
        partitions=s.partitions,
        max_batch=s.max_batch,
        max_body_bytes=s.max_body_bytes,
        produce_timeout_s=s.produce_timeout_s,
        retry_after_s=s.retry_after_s,
        key_cache_s=s.key_cache_s,
        linger_ms=s.linger_ms,
    )
    values.update(overrides)
    return GatewayConfig(**values)
