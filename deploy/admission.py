"""The chat API's door, in the order a request meets it: who calls (key), may it now (rate), is there room (queue)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from deploy.errors import RefusedError
from deploy.limits import CallerLimits, retry_after_header
from deploy.models import ServingKey
from deploy.settings import DeploySettings

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ANONYMOUS = "anonymous"  # the one bucket and queue share of callers without a key, when keys are not required


class Door:
    """One replica's checks before a chat request reaches the model; state lives on the event loop."""

    def __init__(self, settings: DeploySettings, key_check) -> None:
        self.settings, self.key_check = settings, key_check
        self.limits = CallerLimits()

    async def authenticate(self, request: Request) -> ServingKey:
        """The calling key (`Authorization: Bearer ask_...`), or the anonymous caller where keys are optional."""
        from starlette.concurrency import run_in_threadpool

        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if given:
            found = await run_in_threadpool(self.key_check.lookup, given)
            if found is not None:
                return found
            raise RefusedError(401, "`Authorization` names no active serving key")
        if self.settings.require_keys:
            raise RefusedError(
                401,
                "chat completions need `Authorization: Bearer <serving key>` "
                "(`alignloop deploy keys create NAME` makes one)",
            )
        return ServingKey(key_id=ANONYMOUS, name=ANONYMOUS, created_at=_EPOCH, created_by="")

    def check_rate(self, caller: ServingKey) -> None:
        """429 with Retry-After when the key has spent its burst and its rate has not refilled one request yet."""
        rate = caller.rate_per_s or self.settings.key_rate_per_s
        burst = caller.burst or self.settings.key_burst
        wait = self.limits.take(caller.key_id, time.monotonic(), rate, burst)
        if wait > 0:
            raise RefusedError(
                429,
                f"key {caller.name!r} is over its rate of {rate:g} requests/s (burst {burst}); retry in {wait:.2f}s",
                retry_after=retry_after_header(wait),
            )

    @asynccontextmanager
    async def queued(self, caller: ServingKey) -> AsyncIterator[None]:
        """Hold one place in the bounded queue for the request's whole stay (waiting and generating)."""
        s = self.settings
        refused = self.limits.enter(caller.key_id, max_queue=s.max_queue, max_per_key=s.max_queue_per_key)
        if refused is not None:
            raise RefusedError(429, refused, retry_after=str(s.queue_retry_after_s))
        try:
            yield
        finally:
            self.limits.leave(caller.key_id)


async def read_json_body(request: Request, model, limit: int):
    """The body parsed into `model`, read at most `limit` bytes far: 413 past it (from Content-Length when sent,
    before reading a byte), 400 with the field for anything `model` refuses."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RefusedError(413, f"the body must be at most {limit} bytes (`max_body_bytes`); got {declared}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RefusedError(413, f"the body must be at most {limit} bytes (`max_body_bytes`); got more")
        chunks.append(chunk)
    try:
        return model.model_validate_json(b"".join(chunks))
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
