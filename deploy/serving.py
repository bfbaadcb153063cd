"""Serving: the OpenAI-shaped chat API, the replica that follows the registry (hot swap), and the admin API."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import uuid
from collections import defaultdict
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from alignloop.core.feedback_token import sign_feedback_token
from deploy.admission import Door, read_json_body
from deploy.errors import DeployError, NotFoundError, RefusedError, RegistryError, ServingError
from deploy.limits import bound_prompt_text, fit_prompt
from deploy.models import Routing
from deploy.routing import choose_evictions, choose_version
from deploy.settings import DeploySettings

if TYPE_CHECKING:
    from deploy.control import ControlListener

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- request and response shapes
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=32768)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (top_p, n=1, ...)

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    seed: int | None = None
    user: str | None = Field(default=None, max_length=128)
    stream: bool = False
    n: int = 1

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, v: bool) -> bool:
        if v:
            raise ValueError("streaming is not supported; send stream=false")
        return v

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"only n=1 is supported; got {v}")
        return v


class AdminMove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1)  # who acts is the admin token's name, never a field of the body


class PromoteBody(AdminMove):
    version: str | None = None


class CanaryBody(AdminMove):
    version: str
    share: float = Field(gt=0.0, le=1.0)


class RollbackBody(AdminMove):
    to: str | None = None


def error_body(message: str, kind: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param}}


# ---------------------------------------------------------------- the replica
class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("alignloop_deploy_requests", "chat completions answered",
                                ["adapter_version", "outcome"], registry=self.registry)
        self.latency = Histogram("alignloop_deploy_request_seconds", "chat completion latency",
                                 registry=self.registry)
        self.swaps = Counter("alignloop_deploy_swaps", "routing flips applied", registry=self.registry)
        self.swap_seconds = Histogram("alignloop_deploy_swap_seconds", "load-and-flip time of a routing change",
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                      registry=self.registry)
        self.load_failures = Counter("alignloop_deploy_load_failures", "adapters refused on load (hash, format)",
                                     registry=self.registry)
        self.resident = Gauge("alignloop_deploy_resident_adapters", "adapters loaded", registry=self.registry)
        self.generation = Gauge("alignloop_deploy_routing_generation", "routing generation served",
                                registry=self.registry)
        self.refused = Counter("alignloop_deploy_refused", "chat requests turned away at the door, by HTTP status "
                               "(401 key, 413 size, 429 rate or queue, 504 timeout)", ["status"],
                               registry=self.registry)
        self.degraded = Gauge("alignloop_deploy_degraded", "1 while a replica serves less than the routing "
                              "(an adapter failed to load when it started, so the base answers instead)",
                              registry=self.registry)


class Replica:
    """One serving process: follows the registry's routing, loads adapters off the request path, then flips."""

    def __init__(self, settings: DeploySettings) -> None:
        if not settings.base_model:
            raise ServingError("`ALIGNLOOP_DEPLOY_BASE_MODEL` must name the base model directory to serve; got nothing")
        from alignloop.core.db import open_store
        from alignloop.core.settings import get_settings as core_settings
        from deploy.artifacts import LocalArtifactStorage
        from deploy.migrations import FOLDER
        from deploy.runtime import ModelHost

        self.settings = settings
        self.base_model = settings.base_model
        self.token_key = core_settings().resolved_feedback_token_key()  # curation verifies with the same key
        self.engine = open_store(settings.resolved_store_url(), branches=[FOLDER])
        self.storage = LocalArtifactStorage(settings.resolved_artifact_root())
        self.metrics = Metrics()
        self.host = ModelHost(settings.base_model, device=settings.device, torch_threads=settings.torch_threads)
        context = getattr(self.host.base.config, "max_position_embeddings", None) or settings.max_prompt_tokens
        self.prompt_limit = min(settings.max_prompt_tokens, context)  # a longer prompt the model cannot read anyway
        self.routing: Routing | None = None  # what this replica serves; None until the first reconcile
        self.desired: Routing | None = None
        self.applied_at: float | None = None
        self.last_error: str | None = None
        self.last_reconcile_at: float | None = None
        self.last_swap: dict | None = None  # where the time of the last flip went
        self.degraded: dict | None = None  # versions left out of the routing served, and why
        self._heard_at: float | None = None
        self._pins: dict[str | None, int] = defaultdict(int)
        self._last_used: dict[str, float] = {}
        self._pin_lock = threading.Lock()
        self._reconcile_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._reconcile_loop, name="deploy-reconcile", daemon=True)
        self.listener: ControlListener | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        from deploy.control import ControlListener

        self.listener = ControlListener(self.settings.resolved_redis_url(), self.settings.control_channel,
                                        self._on_change)
        self.listener.start()  # subscribe first, so a change during the first reconcile is not missed
        self.listener.subscribed.wait(timeout=3)
        self.reconcile()
        # the model and libraries are long-lived: keep them out of the collector's full passes, which
        # otherwise land on a later swap (measured: up to a second on the first promote under load)
        gc.collect()
        gc.freeze()
        self._loop.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.listener is not None:
            self.listener.stop()
        if self._loop.is_alive():
            self._loop.join(timeout=5)
        self.host.close()
        self.engine.dispose()

    def _on_change(self, base_model: str) -> None:
        if base_model in ("", self.base_model):
            self._heard_at = time.perf_counter()
            self._wake.set()

    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.reconcile_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.reconcile()
            except Exception:  # a bad loop turn must not end the loop; the error is in last_error
                log.exception("reconcile failed")

    # ------------------------------------------------------------ reconcile: load, then flip
    def reconcile(self) -> bool:
        """Bring this replica to the registry's routing. Returns True when it serves the desired routing."""
        from alignloop.core.db import session_scope
        from deploy import registry
        from deploy.runtime import prepare_adapter

        with self._reconcile_lock:
            t0 = time.perf_counter()
            heard, self._heard_at = self._heard_at, None
            self.last_reconcile_at = time.time()
            phases: dict[str, float | str] = {"wake_s": t0 - heard} if heard else {}
            try:
                with session_scope(self.engine) as session:
                    desired = registry.get_routing(session, self.base_model)
                    versions = {v: registry.get_version(session, v) for v in desired.versions()}
            except Exception as exc:
                self.last_error = f"registry unreachable: {exc}"[:500]
                log.warning("%s", self.last_error)
                return False
            self.desired = desired
            phases["registry_s"] = time.perf_counter() - t0
            current = self.routing
            if current is not None and current.generation == desired.generation and \
                    desired.versions() <= set(self.host.resident):
                self._evict(desired)  # adapters pinned by running requests at the last flip may be free now
                return True
            failed: dict[str, str] = {}
            for v, info in versions.items():
                if v in self.host.resident:
                    continue
                try:
                    if info.base_model != self.base_model:
                        raise ServingError(f"adapter {v!r} is for base model {info.base_model!r}, "
                                           f"this replica serves {self.base_model!r}")
                    t1 = time.perf_counter()
                    prepared = prepare_adapter(registry.load_version_artifact(info, self.storage))  # sha256, every load
                    t2 = time.perf_counter()
                    held = self.host.install(prepared, reuse=self._spare_slot(current, desired))
                    phases[f"verify_{v}_s"] = t2 - t1
                    phases[f"install_wait_{v}_s"] = time.perf_counter() - t2 - held
                    phases[f"install_{v}_s"] = held
                    phases[f"install_{v}_mode"] = self.host.last_install_mode
                except Exception as exc:
                    self.metrics.load_failures.inc()
                    if current is None:  # serving nothing yet: the base (and what did load) beats refusing all
                        failed[v] = f"{type(exc).__name__}: {exc}"[:600]
                        log.error("refused adapter %r at start-up (%s); serving without it", v, exc)
                        continue
                    self.last_error = (f"refused adapter {v!r}: {exc}; still serving generation "
                                       f"{current.generation if current else None}")[:800]
                    log.error("%s", self.last_error)
                    return False
            served = _without(desired, failed)
            now = time.perf_counter()
            with self._pin_lock:
                self.routing = served  # the flip: one reference, read by every new request
                for v in served.versions():
                    self._last_used[v] = now
            self.applied_at = time.time()
            recovered = self.degraded is not None and not failed
            self.degraded = {"versions": sorted(failed), "error": "; ".join(f"{v}: {e}" for v, e in failed.items()),
                             "serving_instead": "the base model" if desired.active in failed else served.active} \
                if failed else None
            self.metrics.degraded.set(1 if failed else 0)
            self.last_error = f"degraded: {self.degraded['error']}"[:800] if self.degraded else None
            if current is None or current.generation != desired.generation or recovered:
                phases["total_s"] = total_s = time.perf_counter() - t0
                self.last_swap = {"generation": desired.generation,
                                  **{k: round(x, 4) if isinstance(x, float) else x for k, x in phases.items()}}
                self.metrics.swaps.inc()
                self.metrics.swap_seconds.observe(total_s)
                log.info("serving generation %s: active=%s canary=%s (%.1f%%)", desired.generation, desired.active,
                         desired.canary, 100 * desired.canary_share)
            self._evict(desired)
            self.metrics.generation.set(desired.generation)
            return not failed

    def _spare_slot(self, current: Routing | None, desired: Routing) -> str | None:
        """When the host is full: the least recently used version that nothing routes to or runs on, whose
        slot the next load may overwrite in place (requests route by `self.routing`, so neither the current
        nor the desired versions can be taken)."""
        with self._pin_lock:
            keep = desired.versions() | (current.versions() if current is not None else set())
            spare = choose_evictions(self.host.resident, self._last_used, keep=keep,
                                     pinned={v for v, n in self._pins.items() if n > 0 and v},
                                     max_resident=self.settings.max_resident - 1)
        if spare:
            self._last_used.pop(spare[0], None)
            return spare[0]
        return None

    def _evict(self, routing: Routing) -> None:
        """Unload least recently used adapters beyond max_resident; never a routed one or one a request holds."""
        with self._pin_lock:
            victims = choose_evictions(self.host.resident, self._last_used, keep=routing.versions(),
                                       pinned={v for v, n in self._pins.items() if n > 0 and v},
                                       max_resident=self.settings.max_resident)
        for v in victims:
            self.host.remove(v)
            self._last_used.pop(v, None)
        self.metrics.resident.set(len(self.host.resident))

    # ------------------------------------------------------------ requests
    async def complete(self, req: ChatRequest) -> dict:
        """Answer one admitted request: check its sizes, encode and fit the prompt, generate on the routed version."""
        if req.max_tokens > self.settings.max_tokens_limit:
            raise ServingError(f"`max_tokens` must be at most {self.settings.max_tokens_limit}; got {req.max_tokens}")
        overflow = self.settings.prompt_overflow
        messages = bound_prompt_text([m.model_dump() for m in req.messages], self.prompt_limit,
                                     self.host.max_token_chars, overflow)
        ids = fit_prompt(await asyncio.to_thread(self.host.encode, messages), self.prompt_limit, overflow)
        routing, version = self._pin(req.user)
        t0 = time.perf_counter()
        try:
            fut = self.host.generate_future(version, ids, req.max_tokens, req.temperature, req.seed)
            out = await asyncio.wrap_future(fut)  # cancelled (a timeout): dropped from the queue if not started
        except Exception:
            self.metrics.requests.labels(adapter_version=str(version), outcome="error").inc()
            raise
        finally:
            with self._pin_lock:
                self._pins[version] -= 1
        self.metrics.latency.observe(time.perf_counter() - t0)
        self.metrics.requests.labels(adapter_version=str(version), outcome="ok").inc()
        return self._answer(req, routing, version, out)

    def _pin(self, user: str | None) -> tuple[Routing, str | None]:
        """The routing now and the version it gives `user`, held so no flip unloads it under the request."""
        with self._pin_lock:
            routing = self.routing
            if routing is None:
                raise ServingError(f"replica not ready: {self.last_error or 'first reconcile still running'}")
            version = choose_version(routing, user)
            self._pins[version] += 1
            if version is not None:
                self._last_used[version] = time.perf_counter()
        return routing, version

    def _answer(self, req: ChatRequest, routing: Routing, version: str | None, out) -> dict:
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        # signed over the version that produced this answer (read under the pin, not the routing now)
        token = sign_feedback_token(self.token_key, response_id=rid, base_model=self.base_model,
                                    adapter_version=version, issued_at=datetime.now(UTC))
        return {
            "id": rid, "object": "chat.completion", "created": int(time.time()),
            "model": req.model or self.base_model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                         "finish_reason": out.finish_reason}],
            "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                      "total_tokens": out.prompt_tokens + out.completion_tokens},
            "response_id": rid, "adapter_version": version, "feedback_token": token,
            "routing_generation": routing.generation,
        }

    def health(self) -> dict:
        r, d = self.routing, self.desired
        return {
            "status": "starting" if r is None else "degraded" if self.degraded else (
                "stale" if d and d.generation != r.generation else "ok"),
            "replica_id": self.settings.replica_id, "base_model": self.base_model,
            "serving": None if r is None else {"active": r.active, "canary": r.canary,
                                               "canary_share": r.canary_share, "generation": r.generation},
            "desired_generation": None if d is None else d.generation,
            "resident": sorted(self.host.resident), "applied_at": self.applied_at,
            "last_reconcile_at": self.last_reconcile_at, "last_error": self.last_error, "last_swap": self.last_swap,
            "control_channel_subscribed": bool(self.listener and self.listener.subscribed.is_set()),
            "degraded": self.degraded,
        }


# ---------------------------------------------------------------- the app
def create_app(settings: DeploySettings | None = None) -> FastAPI:
    """The serving app; the model loads and the first reconcile runs at start-up (lifespan), not here."""
    from deploy.settings import get_settings

    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        replica = await asyncio.to_thread(Replica, settings)
        await asyncio.to_thread(replica.start)
        app.state.replica = replica
        from deploy.keys import KeyCheck
        from deploy.tokens import TokenCheck

        app.state.admin_tokens = TokenCheck(replica.engine, settings.admin_token_cache_s)
        app.state.door = Door(settings, KeyCheck(replica.engine, settings.key_cache_s))
        try:
            yield
        finally:
            await asyncio.to_thread(replica.stop)

    app = FastAPI(title="alignloop deploy", lifespan=lifespan,
                  description="OpenAI-shaped chat completions served by the registry's active adapter or canary.")

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body")
        msg = f"`{param}`: {first['msg']}; got {first.get('input')!r}"[:500]
        return JSONResponse(status_code=400, content=error_body(msg, "invalid_request_error", param))

    @app.exception_handler(DeployError)
    async def _deploy_error(request: Request, exc: DeployError):
        if isinstance(exc, RefusedError):
            return _refused(request, exc)
        if isinstance(exc, NotFoundError):
            status = 404
        elif isinstance(exc, RegistryError):
            status = 409
        elif isinstance(exc, ServingError) and str(exc).startswith("replica not ready"):
            status = 503
        else:
            status = 400
        return JSONResponse(status_code=status, content=error_body(str(exc), type(exc).__name__))

    def replica(request: Request) -> Replica:
        return request.app.state.replica

    @app.post("/v1/chat/completions", responses=_CHAT_RESPONSES)
    async def chat_completions(request: Request) -> dict:
        """Body: ChatRequest. Steps: key -> rate -> body -> queue -> generate (within the request timeout)."""
        door: Door = request.app.state.door
        caller = await door.authenticate(request)
        door.check_rate(caller)
        req = await read_json_body(request, ChatRequest, settings.max_body_bytes)
        async with door.queued(caller):
            try:
                return await asyncio.wait_for(request.app.state.replica.complete(req), settings.request_timeout_s)
            except TimeoutError:
                raise RefusedError(504, f"not answered within {settings.request_timeout_s:g}s "
                                        "(`request_timeout_s`)") from None

    @app.get("/healthz")
    async def healthz(rep: Replica = Depends(replica)):
        body = rep.health()
        return JSONResponse(status_code=503 if body["status"] == "starting" else 200, content=body)

    @app.get("/metrics")
    async def metrics(rep: Replica = Depends(replica)) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(rep.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------ admin
    def admin(request: Request, authorization: str | None = Header(default=None)) -> str:
        """The presented admin token's name: who acts, in the audit log."""
        check = request.app.state.admin_tokens
        given = authorization[7:].strip() if authorization and authorization.startswith("Bearer ") else ""
        name = check.name(given) if given else None
        if name is None:
            if not check.enabled():
                raise _HTTPError(503, "admin API is off: make a token with `alignloop deploy tokens create NAME`")
            raise _HTTPError(401, "admin API needs `Authorization: Bearer <admin token>` "
                                  "(`alignloop deploy tokens create NAME` makes one)")
        return name

    @app.exception_handler(_HTTPError)
    async def _http_error(_: Request, exc: _HTTPError):
        return JSONResponse(status_code=exc.status, content=error_body(exc.message, "auth_error"),
                            headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)

    async def _move(rep: Replica, fn) -> dict:
        from alignloop.core.db import session_scope
        from deploy.control import publish_routing_change

        def run():
            with session_scope(rep.engine) as session:
                return fn(session)

        routing = await asyncio.to_thread(run)
        heard = None
        try:
            heard = await asyncio.to_thread(publish_routing_change, settings.resolved_redis_url(), routing.base_model,
                                            channel=settings.control_channel, generation=routing.generation)
        except Exception as exc:  # committed already; replicas catch up on their next reconcile
            log.warning("routing change not published (%s); replicas follow within %ss", exc,
                        settings.reconcile_interval_s)
        rep._wake.set()
        return {"routing": routing.model_dump(mode="json"), "replicas_notified": heard}

    @app.get("/admin/versions", dependencies=[Depends(admin)])
    async def admin_list(rep: Replica = Depends(replica)) -> dict:
        from alignloop.core.db import session_scope
        from deploy import registry

        def run():
            with session_scope(rep.engine) as session:
                return ([v.summary() for v in registry.list_versions(session)],
                        [r.model_dump(mode="json") for r in registry.list_routings(session)])

        versions, routings = await asyncio.to_thread(run)
        return {"versions": versions, "routing": routings}

    @app.get("/admin/audit", dependencies=[Depends(admin)])
    async def admin_audit(limit: int = 100, rep: Replica = Depends(replica)) -> dict:
        from alignloop.core.db import session_scope
        from deploy import registry

        def run():
            with session_scope(rep.engine) as session:
                return [e.model_dump(mode="json") for e in registry.audit_log(session, limit)]

        return {"audit": await asyncio.to_thread(run)}

    @app.post("/admin/promote")
    async def admin_promote(body: PromoteBody, rep: Replica = Depends(replica), actor: str = Depends(admin)) -> dict:
        from deploy import registry

        return await _move(rep, lambda s: registry.promote(s, body.version, actor=actor, reason=body.reason,
                                                           base_model=rep.base_model, storage=rep.storage))

    @app.post("/admin/canary")
    async def admin_canary(body: CanaryBody, rep: Replica = Depends(replica), actor: str = Depends(admin)) -> dict:
        from deploy import registry

        return await _move(rep, lambda s: registry.start_canary(s, body.version, body.share, actor=actor,
                                                                reason=body.reason, storage=rep.storage))

    @app.post("/admin/rollback")
    async def admin_rollback(body: RollbackBody, rep: Replica = Depends(replica), actor: str = Depends(admin)) -> dict:
        from deploy import registry

        return await _move(rep, lambda s: registry.rollback(s, to=body.to, actor=actor, reason=body.reason,
                                                            base_model=rep.base_model, storage=rep.storage))

    return app


_CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "a field breaks its rule, `max_tokens` past the limit, or the prompt past "
                         "`max_prompt_tokens` (unless `prompt_overflow=truncate`)"},
    401: {"description": "no active serving key in `Authorization: Bearer`"},
    413: {"description": "body past `max_body_bytes`"},
    429: {"description": "the key is over its rate, or the queue (or the key's share of it) is full; see Retry-After"},
    504: {"description": "not answered within `request_timeout_s`"},
}


def _refused(request: Request, exc: RefusedError) -> JSONResponse:
    rep = getattr(request.app.state, "replica", None)
    if rep is not None:
        rep.metrics.refused.labels(status=str(exc.status)).inc()
    headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    kind = {401: "auth_error", 413: "invalid_request_error", 429: "rate_limit_error", 504: "timeout"}[exc.status]
    return JSONResponse(status_code=exc.status, content=error_body(str(exc), kind), headers=headers or None)


def _without(routing: Routing, failed: dict[str, str]) -> Routing:
    """`routing` less the versions that failed to load: the base serves in place of a failed active."""
    if not failed:
        return routing
    canary = routing.canary if routing.canary not in failed else None
    return routing.model_copy(update={"active": routing.active if routing.active not in failed else None,
                                      "canary": canary, "canary_share": routing.canary_share if canary else 0.0})


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def serve(settings: DeploySettings) -> None:
    """Run one replica with uvicorn until interrupted."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # past limit_concurrency connections and tasks uvicorn answers 503 itself, before any of the app's work
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                limit_concurrency=settings.limit_concurrency)
