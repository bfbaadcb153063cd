"""An ASGI app served by uvicorn on a free loopback port in a thread: real HTTP for clients such as `openai`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from support.ports import free_port


@contextmanager
def serve_in_thread(app: Any, *, start_timeout: float = 180.0) -> Iterator[str]:
    """Yield the base URL (http://127.0.0.1:PORT) once the app's lifespan has run; stop it on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive():
            raise AssertionError(f"the app on port {port} did not start (see the log above)")
        if time.monotonic() > deadline:
            raise AssertionError(f"the app on port {port} did not start within {start_timeout}s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def replica_env(settings: Any, **extra: str) -> dict[str, str]:
    """The environment of a `deploy serve` child process on `settings`' registry, store and control channel."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "ALIGNLOOP_DEPLOY_ARTIFACT_ROOT": str(settings.artifact_root),
        "ALIGNLOOP_DEPLOY_STORE_URL": settings.store_url,
        "ALIGNLOOP_DEPLOY_REDIS_URL": settings.redis_url,
        "ALIGNLOOP_DEPLOY_CONTROL_CHANNEL": settings.control_channel,
        "ALIGNLOOP_DEPLOY_BASE_MODEL": settings.base_model,
        "ALIGNLOOP_DEPLOY_TORCH_THREADS": "1",
        "ALIGNLOOP_DEPLOY_STAGE_CANDIDATES": str(getattr(settings, "stage_candidates", True)).lower(),
        **extra,
    }
