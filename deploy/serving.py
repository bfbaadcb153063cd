"""Serving's entry point: one router (deploy.router) over the configured backend, run with uvicorn."""

from __future__ import annotations

import logging
import sys

from deploy.router import create_app
from deploy.settings import DeploySettings

__all__ = ["create_app", "serve"]


def serve(settings: DeploySettings) -> None:
    """Run one router with uvicorn until interrupted."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The request loop holds the GIL while it proxies answers; the reconcile thread gives it up at each registry
    # query and Redis read and waits up to the switch interval (5 ms by default) to get it back. Under 20 callers on
    # vLLM a move's registry read took up to 0.5 s; at 1 ms the replica's part of a move (heard to flip, p99 over
    # 101 moves) measured 0.57 s against 0.81 s (bench/deploy/engines.py, one run each).
    sys.setswitchinterval(0.001)
    # past limit_concurrency connections and tasks uvicorn answers 503 itself, before any of the app's work
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        limit_concurrency=settings.limit_concurrency,
    )
