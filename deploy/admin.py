"""The admin API (named admin tokens, audited): list versions and the audit log; canary, promote, rollback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from deploy.api_schemas import CanaryBody, PromoteBody, RollbackBody, error_body
from deploy.models import Routing
from deploy.replica import Replica

log = logging.getLogger(__name__)


def _replica(request: Request) -> Replica:
    return request.app.state.replica


def admin_actor(request: Request, authorization: str | None = Header(default=None)) -> str:
    """The presented admin token's name: who acts, in the audit log."""
    check = request.app.state.admin_tokens
    given = authorization[7:].strip() if authorization and authorization.startswith("Bearer ") else ""
    name = check.name(given) if given else None
    if name is None:
        if not check.enabled():
            raise _AuthFailure(503, "admin API is off: make a token with `alignloop deploy tokens create NAME`")
        raise _AuthFailure(
            401,
            "admin API needs `Authorization: Bearer <admin token>` (`alignloop deploy tokens create NAME` makes one)",
        )
    return name


class _AuthFailure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def _auth_failure(_: Request, exc: _AuthFailure) -> JSONResponse:
    return JSONResponse(
        status_code=exc.status,
        content=error_body(exc.message, "auth_error"),
        headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None,
    )


async def _in_session(rep: Replica, fn: Callable[[Session], Any]) -> Any:
    from alignloop.core.db import session_scope

    def run() -> Any:
        with session_scope(rep.engine) as session:
            return fn(session)

    return await asyncio.to_thread(run)


async def _move(rep: Replica, fn: Callable[[Session], Routing]) -> dict[str, Any]:
    """Commit one registry move, tell every replica on the control channel, wake this one."""
    from deploy.control import publish_routing_change

    routing = await _in_session(rep, fn)
    s = rep.settings
    heard = None
    try:
        heard = await asyncio.to_thread(
            publish_routing_change,
            s.resolved_redis_url(),
            routing.base_model,
            channel=s.control_channel,
            generation=routing.generation,
        )
    except Exception as exc:  # noqa: BLE001 - committed already; replicas catch up on their next reconcile
        log.warning("routing change not published (%s); replicas follow within %ss", exc, s.reconcile_interval_s)
    rep.wake()
    return {"routing": routing.model_dump(mode="json"), "replicas_notified": heard}


ReplicaDep = Annotated[Replica, Depends(_replica)]
ActorDep = Annotated[str, Depends(admin_actor)]


def admin_routes() -> APIRouter:
    from deploy import registry

    router = APIRouter(prefix="/admin")

    @router.get("/versions", dependencies=[Depends(admin_actor)])
    async def admin_list(rep: ReplicaDep) -> dict[str, Any]:
        versions, routings = await _in_session(
            rep,
            lambda s: (
                [v.summary() for v in registry.list_versions(s)],
                [r.model_dump(mode="json") for r in registry.list_routings(s)],
            ),
        )
        return {"versions": versions, "routing": routings}

    @router.get("/audit", dependencies=[Depends(admin_actor)])
    async def admin_audit(rep: ReplicaDep, limit: int = 100) -> dict[str, Any]:
        return {
            "audit": await _in_session(rep, lambda s: [e.model_dump(mode="json") for e in registry.audit_log(s, limit)])
        }

    @router.post("/promote")
    async def admin_promote(body: PromoteBody, rep: ReplicaDep, actor: ActorDep) -> dict[str, Any]:
        return await _move(
            rep,
            lambda s: registry.promote(
                s, body.version, actor=actor, reason=body.reason, base_model=rep.base_model, storage=rep.storage
            ),
        )

    @router.post("/canary")
    async def admin_canary(body: CanaryBody, rep: ReplicaDep, actor: ActorDep) -> dict[str, Any]:
        return await _move(
            rep,
            lambda s: registry.start_canary(
                s, body.version, body.share, actor=actor, reason=body.reason, storage=rep.storage
            ),
        )

    @router.post("/rollback")
    async def admin_rollback(body: RollbackBody, rep: ReplicaDep, actor: ActorDep) -> dict[str, Any]:
        return await _move(
            rep,
            lambda s: registry.rollback(
                s, to=body.to, actor=actor, reason=body.reason, base_model=rep.base_model, storage=rep.storage
            ),
        )

    return router


def add_admin_error_handler(app: Any) -> None:
    app.add_exception_handler(_AuthFailure, _auth_failure)
