"""Schedules: a local Prefect server (the ephemeral one runs no scheduler) and the loop's deployments."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from flows.errors import FlowsError
from flows.settings import FlowsSettings


def _healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def ensure_prefect_server(port: int, state_dir: Path, timeout: float = 90.0) -> str:
    """The API URL of a Prefect server with a scheduler: the configured one, or a local one started here."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        if not _healthy(configured):
            raise FlowsError(f"PREFECT_API_URL={configured} does not answer /health")
        return configured
    api = f"http://127.0.0.1:{port}/api"
    if not _healthy(api):
        state_dir.mkdir(parents=True, exist_ok=True)
        log = open(state_dir / "prefect-server.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PREFECT_HOME": str(state_dir / "prefect-home")})
        (state_dir / "prefect-server.pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while not _healthy(api):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FlowsError(f"the local Prefect server did not start; see {state_dir / 'prefect-server.log'}")
            time.sleep(0.5)
    os.environ["PREFECT_API_URL"] = api
    return api


def build_deployments(settings: FlowsSettings, *, base_model: str | None = None) -> list:
    """Runner deployments: retrain on cron (one at a time), the data trigger and canary-watch on intervals."""
    from datetime import timedelta

    from flows.loop import canary_watch_flow, data_trigger_flow, replay_flow, retrain_flow

    params = {"base_model": base_model or settings.base_model}
    return [
        retrain_flow.to_deployment(
            "retrain", cron=settings.retrain_cron, concurrency_limit=1,
            parameters={**params, "train_config": str(settings.train_config) if settings.train_config else None,
                        "gates": str(settings.gates) if settings.gates else None,
                        "canary_share": settings.canary_share},
            description="snapshot -> train -> evaluate -> gate -> canary; one run at a time"),
        data_trigger_flow.to_deployment(
            "data-trigger", interval=timedelta(seconds=settings.data_check_interval_s), concurrency_limit=1,
            parameters={**params, "min_new_pairs": settings.min_new_pairs},
            description=f"runs retrain when >= {settings.min_new_pairs} new curated pairs arrived"),
        canary_watch_flow.to_deployment(
            "canary-watch", interval=timedelta(seconds=settings.canary_watch_interval_s), concurrency_limit=1,
            parameters=params, description="promote or roll back the canary from live feedback"),
        replay_flow.to_deployment("replay", description="re-curate a Kafka range after filters change"),
    ]


def deploy_retrain_to_pool(settings: FlowsSettings, work_pool: str) -> str:
    """Register the retrain deployment on a work pool (e.g. GPU workers elsewhere) instead of serving it here."""
    from flows.loop import retrain_flow

    root = Path(__file__).resolve().parent.parent
    deployment_id = retrain_flow.from_source(source=str(root), entrypoint="flows/loop.py:retrain_flow").deploy(
        name="retrain", work_pool_name=work_pool, cron=settings.retrain_cron, concurrency_limit=1,
        parameters={"base_model": settings.base_model, "canary_share": settings.canary_share}, build=False,
        push=False, print_next_steps=False)
    return str(deployment_id)
