"""Serving's entry point: one router (deploy.router) over the configured backend, run with uvicorn."""

from __future__ import annotations

import logging

from deploy.router import create_app
from deploy.settings import DeploySettings

__all__ = ["create_app", "serve"]


def serve(settings: DeploySettings) -> None:
    """Run one router with uvicorn until interrupted."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # past limit_concurrency connections and tasks uvicorn answers 503 itself, before any of the app's work
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        limit_concurrency=settings.limit_concurrency,
    )
