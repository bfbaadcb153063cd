"""`alignloop flows serve` as a process against a real `prefect server start` process: the schedules fire,
the data trigger starts one retrain however many triggers fire, canary-watch judges on its interval, and
`--work-pool` hands retrain to a process worker with the run config and gates as parameters."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ALIGNLOOP = str(Path(sys.executable).parent / "alignloop")
INTERVAL = 4  # seconds between data-trigger runs, and between canary-watch runs


# ------------------------------------------------------------------------------------------- helpers
def healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(what: str, check, timeout: float, *, every: float = 0.5, log: Path | None = None):
    """Poll `check()` until it returns something truthy; fail with `what` (and the log's tail) otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log and log.exists() else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")
        time.sleep(every)


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            pytest.fail(f"{proc.args[:4]} did not stop within {timeout:.0f} s of SIGTERM")
    return proc.returncode


@contextmanager
def api(url: str, results: Path | None = None):
    """This test process's Prefect clients talk to `url` (and read results where `flows serve` writes them)."""
    from prefect.settings import temporary_settings

    updates = {"api.url": url, **({"results.local_storage_path": str(results)} if results else {})}
    with temporary_settings(updates=updates):
        yield


def runs_of(deployment: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            return []
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))


def due_runs_of(deployment: str) -> list:
    """Runs that started or are due; the cron's runs scheduled for later (03:00) are left out."""
    from datetime import UTC, datetime, timedelta

    soon = datetime.now(UTC) + timedelta(minutes=5)
    return [r for r in runs_of(deployment) if not (state(r) == "SCHEDULED" and r.expected_start_time > soon)]


def read_run(run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def task_names(run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return [t.name for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))]


def result_of(run) -> dict:
    return run.state.result()


def state(run) -> str:
    return run.state.type.value if run.state else "NONE"


def completed_with(deployment: str, predicate, after: float = 0.0):
    """The first completed run of `deployment` (started after `after`, epoch s) whose result satisfies `predicate`."""
    for run in runs_of(deployment):
        if state(run) == "COMPLETED" and run.start_time and run.start_time.timestamp() >= after:
            out = result_of(run)
            if predicate(out):
                return run, out
    return None


def hold_retrain_limit(base: str):
    """Take the one slot of the retrain global concurrency limit, as a retrain running elsewhere would."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.loop import base_key

    name = f"retrain-{base_key(base)}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        response = client.increment_concurrency_slots_with_lease(
            names=[name], slots=1, mode="concurrency", lease_duration=600
        )
    return response.json()["lease_id"]


def release(lease_id) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease_id)


def start_serve(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [ALIGNLOOP, "flows", "serve", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` (scheduler and all) on a port and a database of its own."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with open(home / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for(
            "the Prefect server to answer /health",
            lambda: proc.poll() is not None or healthy(url),
            180,
            log=home / "server.log",
        )
        assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
        yield {"url": url, "port": port}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def serve_env(loop_env, tmp_path):
    """The environment of this test's processes: loop_env's home, store and Redis; a Prefect client home and
    a result store of their own (results persisted, so the test reads what each flow run decided)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    results = tmp_path / "prefect-results"
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(results),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return {"env": env, "results": results}


@pytest.fixture
def unsnapshottable_config(small_run, tmp_path) -> Path:
    """The small run config with a floor no snapshot reaches: a retrain fails fast at its snapshot step,
    after the scheduling this file tests (and never trains)."""
    cfg = yaml.safe_load(small_run.read_text())
    cfg["snapshot"]["min_train_pairs"] = 100_000
    path = tmp_path / "unsnapshottable.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny_random_base(tmp_path_factory) -> str:
    from support.models import build_tiny_base_model

    return str(build_tiny_base_model(tmp_path_factory.mktemp("base") / "model"))


@pytest.fixture
def canary_artifact(tiny_random_base, tmp_path) -> Path:
    """A LoRA artifact on the tiny base, built before the clock starts (loading torch takes a while)."""
    from support.models import AdapterFactory

    return AdapterFactory(tiny_random_base).build(tmp_path / "adapter-src" / "c1", "c1", seed=1)


# ------------------------------------------------------------------------------------------- tests
def test_serve_fires_trigger_retrain_once_and_canary_watch_on_a_real_server(
    prefect_server,
    serve_env,
    loop_env,
    tiny_random_base,
    canary_artifact,
    unsnapshottable_config,
    make_events,
    curate_events,
    tmp_path,
):
    from flows.loop import data_trigger_flow

    url, base, log = prefect_server["url"], tiny_random_base, tmp_path / "serve.log"
    min_pairs = 20
    with api(url, serve_env["results"]):
        lease = hold_retrain_limit(base)
        t0 = time.time()
        proc = start_serve(
            [
                "--api-url",
                url,
                "--base-model",
                base,
                "--config",
                str(unsnapshottable_config),
                "--min-new-pairs",
                str(min_pairs),
                "--data-check-interval",
                str(INTERVAL),
                "--canary-watch-interval",
                str(INTERVAL),
                "--poll",
                "1",
            ],
            log,
            serve_env["env"],
        )
        try:
            # the deployments live on the server we gave, with their schedules
            wait_for(
                "the four deployments",
                lambda: all(
                    _deployment(n)
                    for n in (
                        "retrain/retrain",
                        "data-trigger/data-trigger",
                        "canary-watch/canary-watch",
                        "replay/replay",
                    )
                ),
                90,
                log=log,
            )
            retrain = _deployment("retrain/retrain")
            assert retrain.global_concurrency_limit.limit == 1
            assert retrain.concurrency_options.collision_strategy.value == "CANCEL_NEW"
            assert retrain.parameters["train_config"] == str(unsnapshottable_config)
            assert _deployment("data-trigger/data-trigger").schedules[0].schedule.interval.total_seconds() == INTERVAL

            # on schedule, with an empty store and no canary: nothing to do, and each says so
            _, trig = wait_for(
                "a scheduled data-trigger run",
                lambda: completed_with("data-trigger/data-trigger", lambda o: True, t0),
                90,
                log=log,
            )
            assert trig["triggered"] is False and trig["pairs_total"] == 0 and trig["threshold"] == min_pairs
            _, watch = wait_for(
                "a scheduled canary-watch run",
                lambda: completed_with("canary-watch/canary-watch", lambda o: True, t0),
                60,
                log=log,
            )
            assert watch["verdict"] == "no-canary"
            assert not due_runs_of("retrain/retrain")

            # enough new pairs, and two more triggers fired at the same moment besides the scheduled ones
            curated = curate_events(loop_env["engine"], make_events(90, preferred="courteous", seed=5))
            assert curated["pairs"] >= min_pairs
            outs: list[dict] = []

            def trigger():
                with api(url, serve_env["results"]):
                    outs.append(
                        data_trigger_flow(base_model=base, min_new_pairs=min_pairs, store_url=loop_env["store_url"])
                    )

            threads = [threading.Thread(target=trigger) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert len(outs) == 2 and all(o["triggered"] for o in outs), outs

            # exactly one retrain runs; any other one a trigger created was cancelled, never queued
            running = wait_for(
                "a retrain run to start",
                lambda: [r for r in due_runs_of("retrain/retrain") if state(r) == "RUNNING"],
                90,
                log=log,
            )
            time.sleep(3 * 1 + 2)  # a few polls of the runner: a second retrain would be proposed by now
            runs = due_runs_of("retrain/retrain")
            assert [state(r) for r in runs].count("RUNNING") == 1, [(r.name, state(r)) for r in runs]
            assert all(state(r) in {"RUNNING", "CANCELLED"} for r in runs), [(r.name, state(r)) for r in runs]
            the_retrain = running[0]
            assert {o["retrain_run"] for o in outs} <= {str(r.id) for r in runs}
            # it was started by a data trigger (its parent task belongs to a data-trigger flow run)
            assert _parent_flow_name(the_retrain) == "data-trigger"
            # the deployment's limit cancels one more started by hand, while the first holds its slot
            extra = _run_deployment_now("retrain/retrain")
            wait_for("the extra retrain to be cancelled", lambda: state(read_run(extra)) == "CANCELLED", 60, log=log)
            # the flow's own global limit (held by this test) keeps the running retrain before its snapshot
            assert not any(n.startswith("snapshot") for n in task_names(the_retrain.id))

            # the slot freed, the retrain goes on to its snapshot, where this config makes the turn skip
            release(lease)
            lease = None
            done = wait_for(
                "the retrain to finish",
                lambda: state(r := read_run(the_retrain.id)) in {"FAILED", "COMPLETED", "CRASHED"} and r,
                120,
                log=log,
            )
            assert (
                state(done) == "COMPLETED"
                and "skipped" in (done.state.message or "")
                and "min_train_pairs" in (done.state.message or "")
            ), done.state.message
            assert any(n.startswith("snapshot") for n in task_names(the_retrain.id))

            # canary-watch judges a live canary on its next run: no feedback yet, so it keeps watching
            version = _start_canary(loop_env, canary_artifact)
            t_canary = time.time()
            _, judged = wait_for(
                "canary-watch to judge the canary",
                lambda: completed_with("canary-watch/canary-watch", lambda o: o.get("canary") == version, t_canary),
                90,
                log=log,
            )
            assert judged["verdict"] == "continue", judged
            assert _routing(loop_env, base).canary == version
        finally:
            if lease:
                release(lease)
            rc = stop(proc)
        assert rc == 0, log.read_text()[-3000:]
        # serving stopped: its schedules are paused, nobody would run them
        assert _deployment("data-trigger/data-trigger").paused


def test_work_pool_hands_retrain_to_a_process_worker_with_config_gates_and_urls(
    prefect_server, serve_env, loop_env, unsnapshottable_config, tmp_path, make_events, curate_events
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    from alignloop.core.settings import without_password

    url, log, worker_log = prefect_server["url"], tmp_path / "serve.log", tmp_path / "worker.log"
    pool, base = f"pool-{uuid.uuid4().hex[:8]}", str(tmp_path / "some-base")  # the run fails before loading it
    gates = Path(__file__).resolve().parents[3] / "retrain" / "configs" / "gates.yaml"
    # some new curated data, so the turn gets as far as the snapshot floor its run config sets
    curate_events(loop_env["engine"], make_events(30, preferred="courteous", seed=5))
    with api(url, serve_env["results"]):
        with get_client(sync_client=True) as client:
            client.create_work_pool(
                WorkPoolCreate(
                    name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
        env = {**serve_env["env"], "PREFECT_API_URL": url, "PREFECT_WORKER_QUERY_SECONDS": "1"}
        with open(worker_log, "wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        proc = start_serve(
            [
                "--api-url",
                url,
                "--base-model",
                base,
                "--work-pool",
                pool,
                "--config",
                str(unsnapshottable_config),
                "--gates",
                str(gates),
                "--data-check-interval",
                "600",
                "--canary-watch-interval",
                "600",
                "--poll",
                "1",
            ],
            log,
            serve_env["env"],
        )
        try:
            dep = wait_for(
                "retrain on the work pool",
                lambda: (d := _deployment("retrain/retrain")) and d.work_pool_name == pool and d,
                90,
                log=log,
            )
            assert dep.parameters["train_config"] == str(unsnapshottable_config)
            assert dep.parameters["gates"] == str(gates)
            assert dep.parameters["store_url"] == loop_env["store_url"]
            # Prefect keeps parameters: the Redis URL goes without its password, the run takes it from settings
            assert dep.parameters["redis_url"] == without_password(loop_env["redis_url"])
            password = urlsplit(loop_env["redis_url"]).password
            assert password and password not in json.dumps(dep.parameters)
            assert dep.parameters["base_model"] == base
            # the rest is served by `flows serve` itself
            wait_for("the served data trigger", lambda: _deployment("data-trigger/data-trigger"), 60, log=log)

            run_id = _run_deployment_now("retrain/retrain")
            done = wait_for(
                "the worker to run retrain",
                lambda: state(r := read_run(run_id)) in {"FAILED", "COMPLETED", "CRASHED"} and r,
                150,
                log=worker_log,
            )
            # the worker ran it with our run config: its snapshot floor is what made the turn skip
            assert done.work_pool_name == pool
            assert done.parameters["train_config"] == str(unsnapshottable_config)
            assert (
                state(done) == "COMPLETED"
                and "skipped" in (done.state.message or "")
                and "min_train_pairs" in (done.state.message or "")
            ), done.state.message
        finally:
            rc = stop(proc)
            stop(worker)
        assert rc == 0, log.read_text()[-3000:]


def test_serve_starts_its_own_server_refuses_a_taken_port_and_stops_what_it_started(prefect_server, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "ALIGNLOOP_HOME": str(tmp_path / "home"),
        "ALIGNLOOP_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
    }
    base = str(tmp_path / "some-base")

    taken = subprocess.run(
        [ALIGNLOOP, "flows", "serve", "--port", str(prefect_server["port"]), "--base-model", base],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert taken.returncode == 2
    assert taken.stderr.strip().startswith(f"error: port {prefect_server['port']} on 127.0.0.1 is taken")
    assert len(taken.stderr.strip().splitlines()) == 1, taken.stderr

    # SIGTERM while it is still starting up: it stops the server it started on the way out
    port, log = free_port(), tmp_path / "early.log"
    early = start_serve(["--port", str(port), "--base-model", base], log, env)
    wait_for("serve to start its server", lambda: "Prefect API:" in log.read_text(), 180, log=log)
    assert stop(early) == 0
    assert not healthy(f"http://127.0.0.1:{port}/api")

    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}/api"
    proc = start_serve(
        ["--port", str(port), "--base-model", base, "--data-check-interval", "600", "--canary-watch-interval", "600"],
        log,
        env,
    )
    try:
        wait_for("serve to start its server and serve", lambda: "Serving on" in log.read_text(), 180, log=log)
        with api(url):
            # the deployments are on the server it started (not on a temporary one)
            assert all(
                _deployment(n)
                for n in ("retrain/retrain", "data-trigger/data-trigger", "canary-watch/canary-watch", "replay/replay")
            )
        assert (tmp_path / "home" / "prefect" / "prefect-home" / "prefect.db").exists()
    finally:
        rc = stop(proc)
    assert rc == 0, log.read_text()[-3000:]
    assert not healthy(url)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed client connections may linger in TIME_WAIT
        s.bind(("127.0.0.1", port))  # nothing listens there any more: the server it started is gone


# ------------------------------------------------------------------------------------------- small readers
def _deployment(name: str):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def _parent_flow_name(run) -> str | None:
    from prefect.client.orchestration import get_client

    if run.parent_task_run_id is None:
        return None
    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(client.read_task_run(run.parent_task_run_id).flow_run_id)
        return client.read_flow(parent.flow_id).name


def _run_deployment_now(name: str):
    from prefect.deployments import run_deployment

    return run_deployment(name, timeout=0).id


def _start_canary(loop_env, src: Path) -> str:
    from alignloop.core.db import session_scope
    from deploy import registry

    with session_scope(loop_env["engine"]) as session:
        version = registry.register_adapter(session, src, actor="test", reason="a canary to watch").version
        registry.start_canary(session, version, 0.2, actor="test", reason="watch it")
    return version


def _routing(loop_env, base: str):
    from alignloop.core.db import session_scope
    from deploy import registry

    with session_scope(loop_env["engine"]) as session:
        return registry.get_routing(session, base)
