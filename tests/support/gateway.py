"""The gateway for tests and benchmarks: API keys in a store, a config, the app served by uvicorn in a thread."""

from __future__ import annotations

import threading
import time
from typing import Any

from .ports import free_port


def make_key(engine, app_id: str) -> tuple[str, str]:
    """(key_id, key) of a new API key for `app_id` in the store behind `engine`."""
    from alignloop.core.db import session_scope
    from ingest.store import create_key

    with session_scope(engine) as session:
        record, key = create_key(session, app_id)
    return record.key_id, key


def gateway_config(bootstrap: str, topic: str, engine, **overrides: Any):
    """A GatewayConfig reading API keys from the store behind `engine`."""
    from alignloop.core.db import session_scope
    from ingest.gateway import GatewayConfig
    from ingest.store import find_app_for_key

    def find_app(key: str) -> str | None:
        with session_scope(engine) as session:
            return find_app_for_key(session, key)

    values: dict[str, Any] = dict(
        bootstrap=bootstrap,
        topic=topic,
        find_app=find_app,
        source_key=b"test-source-key",
        partitions=6,
        produce_timeout_s=5.0,
        key_cache_s=0.5,
    )
    values.update(overrides)
    return GatewayConfig(**values)


class LiveGateway:
    """The gateway app served by uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, cfg):
        import uvicorn

        from ingest.gateway import create_app

        self.app = create_app(cfg)
        # host and port, not a pre-bound socket: uvicorn serving a handed-in socket answers ~40 ms late
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveGateway:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
