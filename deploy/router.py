"""The router: alignloop's OpenAI-compatible front (`/v1/chat/completions` with streaming, `/v1/models`) over one
backend. It does what an engine cannot: the serving key and bounds at the door, the sticky canary per user, the
version and a signed feedback token on every answer, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from alignloop.core.feedback_token import sign_feedback_token
from deploy.admission import Door, read_json_body
from deploy.api_schemas import (
    DONE_EVENT,
    ChatRequest,
    Completion,
    Stamp,
    chat_answer,
    chunk_event,
    error_body,
    model_entry,
    usage,
)
from deploy.errors import (
    DeployError,
    EngineError,
    NotFoundError,
    RefusedError,
    RegistryError,
    ServingError,
)
from deploy.limits import bound_prompt_text, fit_prompt
from deploy.replica import Replica
from deploy.settings import DeploySettings

log = logging.getLogger(__name__)

CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "a field breaks its rule or asks for what is not supported (n>1, tools, logprobs, ...), "
        "`max_tokens` past the limit, or the prompt past `max_prompt_tokens` (unless "
        "`prompt_overflow=truncate`)"
    },
    401: {"description": "no active serving key in `Authorization: Bearer`"},
    413: {"description": "body past `max_body_bytes`"},
    429: {"description": "the key is over its rate, or the queue (or the key's share of it) is full; see Retry-After"},
    502: {"description": "the engine failed the request (vLLM backend; a failing server is retried on another first)"},
    503: {"description": "not ready yet, or no engine server can take the request (vLLM backend)"},
    504: {"description": "not answered within `request_timeout_s`"},
}


def create_app(settings: DeploySettings | None = None) -> FastAPI:
    """The serving app; the backend starts and the first reconcile runs at start-up (lifespan), not here."""
    from deploy.admin import add_admin_error_handler, admin_routes
    from deploy.settings import get_settings

    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from deploy.keys import KeyCheck
        from deploy.tokens import TokenCheck

        replica = await asyncio.to_thread(Replica, settings)
        await asyncio.to_thread(replica.start)
        app.state.replica = replica
        app.state.admin_tokens = TokenCheck(replica.engine, settings.admin_token_cache_s)
        app.state.door = Door(settings, KeyCheck(replica.engine, settings.key_cache_s))
        try:
            yield
        finally:
            await asyncio.to_thread(replica.stop)

    app = FastAPI(
        title="alignloop deploy",
        lifespan=lifespan,
        description="OpenAI-compatible chat completions served by the registry's active adapter or canary.",
    )
    app.state.settings = settings
    _add_error_handlers(app)
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"], responses=CHAT_RESPONSES)
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.include_router(admin_routes())
    add_admin_error_handler(app)
    return app


# ---------------------------------------------------------------- chat: the request path as named steps
async def chat_completions(request: Request) -> Any:
    """Body: ChatRequest. Steps: key -> rate -> body -> queue -> prompt -> pin a version -> generate or stream."""
    settings: DeploySettings = request.app.state.settings
    door: Door = request.app.state.door
    rep: Replica = request.app.state.replica
    caller = await door.authenticate(request)
    door.check_rate(caller)
    req = await read_json_body(request, ChatRequest, settings.max_body_bytes)
    if req.stream:
        return await _stream(rep, door, caller, req)
    async with door.queued(caller):
        try:
            return await asyncio.wait_for(_answer(rep, req), settings.request_timeout_s)
        except TimeoutError:
            raise _timeout(settings) from None


async def _prompt_ids(rep: Replica, req: ChatRequest) -> list[int]:
    """Check the request's sizes, then the prompt's token ids fitted to the limit (or a 400)."""
    if req.max_tokens > rep.settings.max_tokens_limit:
        raise ServingError(f"`max_tokens` must be at most {rep.settings.max_tokens_limit}; got {req.max_tokens}")
    overflow = rep.settings.prompt_overflow
    messages = bound_prompt_text(
        [m.model_dump() for m in req.messages], rep.prompt_limit, rep.backend.max_token_chars, overflow
    )
    return fit_prompt(await asyncio.to_thread(rep.backend.encode, messages), rep.prompt_limit, overflow)


def _stamp(rep: Replica, req: ChatRequest, generation: int, version: str | None) -> Stamp:
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    # signed over the version that produced this answer (read under the pin, not the routing now)
    token = sign_feedback_token(
        rep.token_key, response_id=rid, base_model=rep.base_model, adapter_version=version, issued_at=datetime.now(UTC)
    )
    return Stamp(
        response_id=rid,
        model=req.model or rep.model_name,
        adapter_version=version,
        generation=generation,
        feedback_token=token,
        created=int(time.time()),
    )


async def _answer(rep: Replica, req: ChatRequest) -> dict[str, Any]:
    ids = await _prompt_ids(rep, req)
    routing, version = rep.pin(req.user, req.model)
    t0 = time.perf_counter()
    try:
        out = await rep.backend.generate(version, ids, req.sampling())
    except Exception:
        rep.metrics.requests.labels(adapter_version=str(version), outcome="error").inc()
        raise
    finally:
        rep.release(version)
    rep.metrics.latency.observe(time.perf_counter() - t0)
    rep.metrics.requests.labels(adapter_version=str(version), outcome="ok").inc()
    return chat_answer(_stamp(rep, req, routing.generation, version), out)


async def _stream(rep: Replica, door: Door, caller: Any, req: ChatRequest) -> StreamingResponse:
    """Admit, fit the prompt and pin before the first byte (so refusals are still plain 4xx), then stream."""
    queue_slot = door.queued(caller)
    await queue_slot.__aenter__()
    try:
        ids = await _prompt_ids(rep, req)
        routing, version = rep.pin(req.user, req.model)
    except BaseException:
        await queue_slot.__aexit__(None, None, None)
        raise
    stamp = _stamp(rep, req, routing.generation, version)

    async def events() -> AsyncIterator[str]:
        try:
            async for event in _stream_events(rep, req, stamp, ids):
                yield event
        finally:
            rep.release(version)
            await queue_slot.__aexit__(None, None, None)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Alignloop-Adapter-Version": version or "base"},
    )


async def _stream_events(rep: Replica, req: ChatRequest, stamp: Stamp, ids: list[int]) -> AsyncIterator[str]:
    """The answer as server-sent events: role, deltas, the finish, usage when asked, [DONE]; an engine failure
    mid-stream ends it with an error event (the status line is long gone)."""
    version, t0 = stamp.adapter_version, time.perf_counter()
    yield chunk_event(stamp, {"role": "assistant", "content": ""})
    final: Completion | None = None
    try:
        async with asyncio.timeout(rep.settings.request_timeout_s):
            async for piece in rep.backend.stream(version, ids, req.sampling()):
                if isinstance(piece, Completion):
                    final = piece
                elif piece:
                    yield chunk_event(stamp, {"content": piece})
    except TimeoutError:
        rep.metrics.requests.labels(adapter_version=str(version), outcome="timeout").inc()
        yield f"data: {_error_json(_timeout(rep.settings))}\n\n"
        return
    except Exception as exc:  # noqa: BLE001 - the status line is sent: the error goes in the stream
        rep.metrics.requests.labels(adapter_version=str(version), outcome="error").inc()
        log.warning("stream %s failed: %s", stamp.response_id, exc)
        yield f"data: {_error_json(exc)}\n\n"
        return
    assert final is not None, "a backend's stream ends with its Completion"
    rep.metrics.latency.observe(time.perf_counter() - t0)
    rep.metrics.requests.labels(adapter_version=str(version), outcome="ok").inc()
    yield chunk_event(stamp, {}, finish_reason=final.finish_reason)
    if req.include_usage:
        yield chunk_event(stamp, {}, usage_=usage(final), choices=False)
    yield DONE_EVENT


def _error_json(exc: Exception) -> str:
    import json

    return json.dumps(error_body(f"{type(exc).__name__}: {exc}"[:500], "server_error"))


def _timeout(settings: DeploySettings) -> RefusedError:
    return RefusedError(504, f"not answered within {settings.request_timeout_s:g}s (`request_timeout_s`)")


# ---------------------------------------------------------------- models, health, metrics
async def list_models(request: Request) -> dict[str, Any]:
    """The base model (its served name) and each version the routing serves now; the door's key check applies."""
    door: Door = request.app.state.door
    await door.authenticate(request)
    rep: Replica = request.app.state.replica
    routing = rep.routing
    data = [model_entry(rep.model_name, role="base", base_model=rep.base_model)]
    if routing is not None:
        roles = {routing.active: "active", routing.canary: "canary"}
        data += [
            model_entry(v, parent=rep.model_name, role=roles[v], routing_generation=routing.generation)
            for v in sorted(routing.versions())
        ]
    return {"object": "list", "data": data}


async def healthz(request: Request) -> JSONResponse:
    body = request.app.state.replica.health()
    return JSONResponse(status_code=503 if body["status"] == "starting" else 200, content=body)


async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(request.app.state.replica.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# ---------------------------------------------------------------- errors: one JSON shape, the right status
def _add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _bad_request)  # type: ignore[arg-type]
    app.add_exception_handler(DeployError, _deploy_error)  # type: ignore[arg-type]


async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"] if p != "body")
    msg = f"`{param}`: {first['msg']}; got {first.get('input')!r}"[:500] if param else str(first["msg"])[:500]
    return JSONResponse(status_code=400, content=error_body(msg, "invalid_request_error", param or None))


async def _deploy_error(request: Request, exc: DeployError) -> JSONResponse:
    if isinstance(exc, RefusedError):
        return _refused(request, exc)
    if isinstance(exc, EngineError):
        return JSONResponse(status_code=exc.status, content=error_body(str(exc), "engine_error"))
    if isinstance(exc, NotFoundError):
        status = 404
    elif isinstance(exc, RegistryError):
        status = 409
    elif isinstance(exc, ServingError) and str(exc).startswith("replica not ready"):
        status = 503
    else:
        status = 400
    return JSONResponse(status_code=status, content=error_body(str(exc), type(exc).__name__))


def _refused(request: Request, exc: RefusedError) -> JSONResponse:
    rep = getattr(request.app.state, "replica", None)
    if rep is not None:
        rep.metrics.refused.labels(status=str(exc.status)).inc()
    headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    kind = {401: "auth_error", 413: "invalid_request_error", 429: "rate_limit_error", 504: "timeout"}[exc.status]
    return JSONResponse(status_code=exc.status, content=error_body(str(exc), kind), headers=headers or None)
