"""Schedules: the Prefect server the loop's deployments live on (a given one, or one started here) and the
deployments themselves, served in this process or registered on a work pool.

The Prefect API URL travels as a Prefect `Settings` context (`temporary_settings`) around everything that
talks to the server, never through this process's environment: Prefect reads its settings once, so a
variable set later is not seen, and a client without a URL silently starts a temporary server of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

from flows.errors import FlowsError
from flows.settings import FlowsSettings

RETRAIN_DEPLOYMENT = "retrain/retrain"  # flow name / deployment name, as run_deployment spells it


def _healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class PrefectServer:
    """The Prefect API the loop is served against; `process` is set when this process started the server."""

    api_url: str
    process: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def started_here(self) -> bool:
        return self.process is not None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server this process started (its whole process group); a given server is left alone."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass


def connect_prefect_server(api_url: str) -> PrefectServer:
    """A Prefect server that is already running (`--api-url`, settings, or Prefect's own profile)."""
    if not _healthy(api_url):
        raise FlowsError(
            f"the Prefect API at {api_url} does not answer /health; start it, or leave out "
            "`--api-url` to let `flows serve` start one"
        )
    return PrefectServer(api_url=api_url.rstrip("/"))


def start_prefect_server(
    port: int, state_dir: Path, *, timeout: float = 120.0, stopping: threading.Event | None = None
) -> PrefectServer:
    """`prefect server start` on 127.0.0.1:`port`, its database and logs under `state_dir`; waits for /health
    (and stops it again when `stopping` is set meanwhile)."""
    if _port_taken("127.0.0.1", port):
        raise FlowsError(
            f"port {port} on 127.0.0.1 is taken, so no Prefect server can start there; pass "
            f"`--port` for another one, or `--api-url http://127.0.0.1:{port}/api` if it is a "
            "Prefect server already"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "prefect-server.log"
    # the server's own settings go to its environment; PREFECT_API_URL is a client setting and must not leak in
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(state_dir / "prefect-home")  # its database lives with the rest of our state
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    server = PrefectServer(api_url=f"http://127.0.0.1:{port}/api", process=proc, log=log_path)
    deadline = time.monotonic() + timeout
    try:
        while not _healthy(server.api_url):
            if stopping is not None and stopping.is_set():
                raise SystemExit(0)  # asked to stop before anything was served
            if proc.poll() is not None:
                raise FlowsError(
                    f"`prefect server start` exited with code {proc.returncode} before answering on "
                    f"port {port}: {_last_line(log_path)} (log: {log_path})"
                )
            if time.monotonic() > deadline:
                raise FlowsError(
                    f"`prefect server start` did not answer /health on port {port} within "
                    f"{timeout:.0f} s (log: {log_path})"
                )
            time.sleep(0.5)
    except BaseException:  # a timeout, or a signal while waiting: nothing may outlive us
        server.stop()
        raise
    return server


def _last_line(path: Path) -> str:
    lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1].strip() if lines else "no output"


def open_prefect_server(
    settings: FlowsSettings, state_dir: Path, *, stopping: threading.Event | None = None
) -> PrefectServer:
    """The configured Prefect API (`prefect_api_url`, else Prefect's own PREFECT_API_URL), or a local server."""
    from prefect.settings import get_current_settings

    given = settings.prefect_api_url or get_current_settings().api.url
    if given:
        return connect_prefect_server(str(given))
    return start_prefect_server(
        settings.prefect_port, state_dir, timeout=settings.prefect_start_timeout_s, stopping=stopping
    )


@contextmanager
def prefect_api(api_url: str):
    """Every Prefect client inside (and every flow-run process a runner starts) talks to `api_url`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}) as settings:
        yield settings


# ------------------------------------------------------------------------------------------- deployments
def _concurrency_one():
    """One run at a time per deployment; a run that would be a second one is cancelled, not queued."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def retrain_parameters(settings: FlowsSettings, *, store_url: str | None = None, redis_url: str | None = None) -> dict:
    """What a retrain run gets: base model, run config and gates (absolute paths), canary share, and where
    the store and Redis are when it runs somewhere else (a work pool's worker). Prefect stores parameters,
    so the URLs go without passwords: the run takes those from its own settings."""
    from alignloop.core.settings import without_password

    params = {
        "base_model": settings.base_model,
        "train_config": str(Path(settings.train_config).resolve()) if settings.train_config else None,
        "gates": str(Path(settings.gates).resolve()) if settings.gates else None,
        "canary_share": settings.canary_share,
        "actor": settings.actor,
    }
    if store_url:
        params["store_url"] = without_password(store_url)
    if redis_url:
        params["redis_url"] = without_password(redis_url)
    return params


def build_deployments(settings: FlowsSettings, *, base_model: str | None = None) -> list:
    """Runner deployments: retrain on cron, the data trigger and canary-watch on intervals, replay on demand.

    Retrain, the data trigger and canary-watch each run one at a time: a run that would overlap the one in
    progress is cancelled by the server (a second retrain is never queued behind the first).
    """
    from flows.loop import canary_watch_flow, data_trigger_flow, replay_flow, retrain_flow

    if base_model:
        settings = settings.model_copy(update={"base_model": base_model})
    base = {"base_model": settings.base_model}
    return [
        retrain_flow.to_deployment(
            "retrain",
            cron=settings.retrain_cron,
            concurrency_limit=_concurrency_one(),
            parameters=retrain_parameters(settings),
            description="snapshot -> train -> evaluate -> gate -> canary; one run at a time",
        ),
        data_trigger_flow.to_deployment(
            "data-trigger",
            interval=timedelta(seconds=settings.data_check_interval_s),
            concurrency_limit=_concurrency_one(),
            parameters={**base, "min_new_pairs": settings.min_new_pairs, "deployment": RETRAIN_DEPLOYMENT},
            description=f"runs retrain when >= {settings.min_new_pairs} new curated pairs arrived",
        ),
        canary_watch_flow.to_deployment(
            "canary-watch",
            interval=timedelta(seconds=settings.canary_watch_interval_s),
            concurrency_limit=_concurrency_one(),
            parameters={**base, "policy": str(Path(settings.canary_policy).resolve())},
            description="promote or roll back the canary from live feedback",
        ),
        replay_flow.to_deployment("replay", description="re-curate a Kafka range after filters change"),
    ]


def deploy_retrain_to_pool(settings: FlowsSettings, work_pool: str, *, store_url: str, redis_url: str) -> str:
    """Register the retrain deployment on a work pool (a worker runs it, e.g. on a GPU machine) instead of
    serving it here. The code is taken from this checkout; paths and URLs are passed as run parameters, so
    they must be valid where the worker runs."""
    from flows.loop import retrain_flow

    root = Path(__file__).resolve().parent.parent
    try:
        # from_source is sync here (no running event loop); Prefect types it as Flow | Coroutine for both uses
        deployment_id = retrain_flow.from_source(  # type: ignore[union-attr]
            source=str(root), entrypoint="flows/loop.py:retrain_flow"
        ).deploy(
            name="retrain",
            work_pool_name=work_pool,
            cron=settings.retrain_cron,
            concurrency_limit=_concurrency_one(),
            parameters=retrain_parameters(settings, store_url=store_url, redis_url=redis_url),
            description="snapshot -> train -> evaluate -> gate -> canary; on a work pool, one run at a time",
            build=False,
            push=False,
            print_next_steps=False,
        )
    except ValueError as exc:
        if "could not find work pool" not in str(exc).lower():
            raise
        raise FlowsError(
            f"`--work-pool` {work_pool!r} does not exist on this Prefect server; create it, e.g. "
            f"`prefect work-pool create {work_pool} --type process`, and start a worker on it"
        ) from exc
    return str(deployment_id)


def describe_api(url: str) -> str:
    u = urlparse(url)
    return f"{u.hostname}:{u.port}" if u.port else url


def serve_deployments(
    deployments: list, *, poll_s: float, on_ready=None, stopping: threading.Event | None = None
) -> None:
    """Serve `deployments` in this process until SIGTERM or SIGINT; on the way out the runner cancels its
    in-flight runs and pauses these deployments' schedules (nobody would run them). A stop asked for
    through `stopping` before the runner starts ends here, between steps."""
    import asyncio

    from prefect.runner import Runner

    stopping = stopping or threading.Event()
    runner = Runner(name=f"alignloop-flows-{os.getpid()}", query_seconds=poll_s, pause_on_shutdown=True)
    for deployment in deployments:
        if stopping.is_set():
            return
        runner.add_deployment(deployment)
    if on_ready is not None:
        on_ready()  # registered on the server: their schedules are live from here
    # from here both signals take the runner's graceful path (it installs the same handler for SIGTERM when
    # it starts), never a KeyboardInterrupt thrown into whatever the loop is doing
    previous = {sig: signal.signal(sig, runner.handle_sigterm) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if not stopping.is_set():
            asyncio.run(runner.start())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _drain_prefect_workers()


def _drain_prefect_workers(timeout: float = 10.0) -> None:
    """Send the logs and events still queued while the server is up; at exit they would be retried against
    a server that `flows serve` has stopped by then."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)
