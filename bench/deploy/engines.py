"""Serving engines side by side: tokens/s through alignloop's router on vLLM vs vLLM direct, embedded vs vLLM,
and the adapter swap time on vLLM, in one run.

Swap time is measured twice: promotes on an idle router (the engine's own cost), and registry moves (promote,
canary, promote, rollback, repeated) while 20 clients call a router over two vLLM servers, then two embedded
replicas, from the move to every replica serving it; each fresh candidate is registered STAGE_WAIT_S before its
move (as the loop registers before evaluating), once with candidates staged (the default) and once without (the
baseline: the load happens at the move). The "each replica serves the new version within 1 s (p99)" target is
judged here, not by timed asserts in the tests (tests/integration/deploy/test_vllm_backend.py and
test_replicas.py check the same moves for correctness: no failed request, every answer from the weights it
names, a tampered artifact never loaded).

    python bench/deploy/engines.py            # writes bench/results/deploy_engines.json
    python bench/deploy/engines.py --quick    # fewer rounds, for a smoke run

Needs Redis (`alignloop stack up`) and the vLLM environment (`alignloop deploy vllm-setup`). Starts two vLLM
servers on a random tiny Llama (hidden 128: head size 32, which vLLM's CPU attention takes); the tokens/s
compare a router attached to one of them, that server direct, and a router on the embedded engine. The ratios
within this run are what to compare; absolute numbers drift with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "deploy_engines.json"
MOVE_ROUNDS = 40  # per pass: 1 + 20 x 3 + 20 x 2 = 101 moves under load (a p99 that is not just the slowest)
PASSES = 4  # vLLM and embedded, each with and without staging
STAGE_WAIT_S = 3.0  # from registering a candidate to its move (in the loop: its evaluation, minutes)
sys.path.insert(0, str(ROOT / "tests"))  # the tiny model and adapter builders the tests use


async def _rate(url: str, body: dict, headers: dict, concurrency: int, requests: int) -> float:
    """Completion tokens per second for `requests` requests, `concurrency` at a time."""
    done = {"tokens": 0}
    left = iter(range(requests))

    async def worker(http: httpx.AsyncClient) -> None:
        for _ in left:
            r = await http.post(url, json=body, headers=headers)
            r.raise_for_status()
            done["tokens"] += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency + 4)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        return done["tokens"] / (time.perf_counter() - t0)


def rate(url: str, body: dict, headers: dict, concurrency: int, requests: int) -> float:
    return asyncio.run(_rate(url, body, headers, concurrency, requests))


def _adapters(move_rounds: int) -> int:
    """a1-a6 for the idle promotes, then a fresh candidate per move round (and one to start) in each pass."""
    return 6 + PASSES * (1 + move_rounds)


def _registry(work: Path, base: Path, redis_url: str, adapters: int):
    from alignloop.core.db import open_store, session_scope
    from deploy import registry
    from deploy.artifacts import LocalArtifactStorage
    from deploy.keys import create_serving_key
    from deploy.settings import DeploySettings
    from support.models import AdapterFactory

    settings = DeploySettings(
        artifact_root=work / "artifacts",
        store_url=f"sqlite:///{work / 'store.db'}",
        redis_url=redis_url,
        control_channel=f"bench:{uuid.uuid4().hex}",
        base_model=str(base),
        model_name="tiny",
        torch_threads=1,
        max_queue=128,
        max_queue_per_key=128,
        max_resident=3,
        reconcile_interval_s=1.0,
        stage_candidates=False,  # the idle promotes measure the load itself; the moves under load set it per pass
    )
    from deploy.migrations import FOLDER

    engine = open_store(settings.resolved_store_url(), branches=[FOLDER])  # deploy's tables, as a replica makes them
    storage = LocalArtifactStorage(settings.artifact_root)
    factory = AdapterFactory(base)
    with session_scope(engine) as s:
        key = create_serving_key(s, "bench", created_by="bench", rate_per_s=100000, burst=100000)[1]
        sources = {f"a{i}": factory.build(work / "src" / f"a{i}", f"a{i}", seed=i) for i in range(1, adapters + 1)}
        for i in range(1, 7):  # the rest are registered just before their moves
            registry.register_adapter(s, sources[f"a{i}"], actor="bench", reason="bench", storage=storage)
    return settings, engine, storage, key, sources


def _promote(engine, storage, settings, version: str) -> None:
    from alignloop.core.db import session_scope
    from deploy import registry
    from deploy.control import publish_routing_change

    with session_scope(engine) as s:
        routing = registry.promote(s, version, actor="bench", reason="bench", storage=storage)
    publish_routing_change(settings.resolved_redis_url(), routing.base_model, channel=settings.control_channel)


def _wait_health(url: str, done, what: str, timeout: float = 30) -> dict:
    """Poll the router's /healthz every 10 ms until `done(serving)` holds; its whole health then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = httpx.get(f"{url}/healthz", timeout=5).json()
        if h.get("serving") and done(h["serving"]):
            return h
        time.sleep(0.01)
    raise RuntimeError(f"router at {url} did not serve {what} within {timeout}s")


def _wait_serving(url: str, version: str | None) -> dict:
    return _wait_health(url, lambda serving: serving["active"] == version, str(version))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--move-rounds", type=int, default=MOVE_ROUNDS, help="move rounds per pass (2-3 moves each)")
    args = ap.parse_args()
    if args.quick:
        args.move_rounds = 2

    from deploy.settings import DeploySettings
    from deploy.vllm_env import VllmLaunch, start_vllm, wait_vllm_ready
    from support.models import PROMPT, build_tiny_base_model
    from support.ports import free_port

    new_tokens, rounds = 48, (1 if args.quick else 5)
    per = {1: 4 if args.quick else 16, 32: 32 if args.quick else 96}
    work = Path(tempfile.mkdtemp(prefix="alignloop-bench-engines-"))
    base = build_tiny_base_model(work / "base", hidden=128, layers=2)
    from alignloop.core.settings import get_settings as core

    # the stack runs with a Redis password: the service's own settings put it into the URL
    settings, engine, storage, key, sources = _registry(
        work, base, core().with_redis_password(args.redis_url), _adapters(args.move_rounds)
    )
    python = DeploySettings().resolved_vllm_python()
    launch = VllmLaunch(python=python, base_model=str(base), max_model_len=512, max_loras=5)  # max_resident 4 + 1
    servers = [start_vllm(launch, free_port(), work / "logs") for _ in range(2)]
    t_start = time.perf_counter()
    try:
        wait_vllm_ready(servers, timeout=1200)
        vllm_start_s = time.perf_counter() - t_start
        result = _measure(
            args, settings, engine, storage, key, servers[0].url, base, new_tokens, rounds, per, work, PROMPT
        )
        result["moves_under_load"] = _moves_under_load(
            args, settings, engine, storage, key, sources, [s.url for s in servers], work, PROMPT
        )
    finally:
        for server in servers:
            server.stop()
    result["vllm_start_s"] = round(vllm_start_s, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _router_process(settings, port: int, log: Path, **update):
    """`alignloop deploy serve` in its own process (as in production), configured through its environment."""
    import os
    import subprocess

    s = settings.model_copy(update=update)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name, value in s.model_dump(mode="json", exclude_none=True).items():
        if name != "replica_id":
            env[f"ALIGNLOOP_DEPLOY_{name.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    cmd = [sys.executable, "-c", "from deploy.cli import app; app()", "serve", "--port", str(port)]
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _wait_up(url: str, proc, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"router at {url} exited {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"router at {url} not up within {timeout}s")


def _measure(args, settings, engine, storage, key, vllm_url, base, new_tokens, rounds, per, work, prompt) -> dict:
    from support.ports import free_port

    chat = {"model": "tiny", "messages": prompt, "max_tokens": new_tokens, "temperature": 1.0}
    auth = {"Authorization": f"Bearer {key}"}
    ports = {"vllm": free_port(), "embedded": free_port()}
    procs = {
        "vllm": _router_process(
            settings,
            ports["vllm"],
            work / "router-vllm.log",
            backend="vllm",
            vllm_urls=[vllm_url],
            vllm_lora_root=work / "loras",
        ),
        "embedded": _router_process(settings, ports["embedded"], work / "router-embedded.log"),
    }
    via_vllm, embedded = (f"http://127.0.0.1:{ports[k]}" for k in ("vllm", "embedded"))
    samples: dict[str, list[float]] = {}
    try:
        for k, p in procs.items():
            _wait_up(f"http://127.0.0.1:{ports[k]}", p)
        targets = {
            "vllm_direct": (f"{vllm_url}/v1/chat/completions", {**chat, "model": "base"}, {}),
            "router_on_vllm": (f"{via_vllm}/v1/chat/completions", chat, auth),
            "router_on_embedded": (f"{embedded}/v1/chat/completions", chat, auth),
        }
        for url, body, headers in targets.values():
            rate(url, body, headers, 4, 8)  # warm-up
        for _ in range(rounds):  # interleaved, so load drift hits every target alike
            for c in (1, 32):
                for name, (url, body, headers) in targets.items():
                    samples.setdefault(f"{name}_c{c}", []).append(rate(url, body, headers, c, per[c]))
        swaps = _promotes(settings, engine, storage, via_vllm, 3 if args.quick else 8)
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(timeout=30)
    # with no router attached (a router unloads the names it did not load itself)
    swaps["vllm_load_plus_unload_ms_median"] = _raw_swap(vllm_url, Path(storage.root) / "a1", 3 if args.quick else 8)
    tps = {k: round(statistics.median(v), 1) for k, v in samples.items()}
    return {
        "what": "serving engines: router on vLLM vs vLLM direct, embedded vs vLLM, swap time on vLLM",
        "command": "python bench/deploy/engines.py" + (" --quick" if args.quick else ""),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "note": "2 cores shared with other work while measured; compare ratios within this run",
        },
        "setup": "each router is `alignloop deploy serve` in its own process; the clients are this process",
        "model": {
            "base": "random tiny Llama (tests/support/models.py, hidden 128, 2 layers)",
            "new_tokens": new_tokens,
            "temperature": 1.0,
            "vllm": "one server, --dtype float32, OMP threads 1",
        },
        "tokens_per_s": tps,
        "router_over_vllm_direct_c1": round(tps["router_on_vllm_c1"] / tps["vllm_direct_c1"], 3),
        "router_over_vllm_direct_c32": round(tps["router_on_vllm_c32"] / tps["vllm_direct_c32"], 3),
        "embedded_over_vllm_c1": round(tps["router_on_embedded_c1"] / tps["router_on_vllm_c1"], 3),
        "embedded_over_vllm_c32": round(tps["router_on_embedded_c32"] / tps["router_on_vllm_c32"], 3),
        "samples": {k: [round(x, 1) for x in v] for k, v in samples.items()},
        "swap_on_vllm": swaps,
    }


def _promotes(settings, engine, storage, router_url: str, n: int) -> dict:
    """Promote through the registry n times: publish -> the router serves it (verify, copy, load on vLLM, flip)."""
    promote_s, install_s = [], []
    for i in range(n):
        version = f"a{1 + i % 6}"
        t0 = time.perf_counter()
        _promote(engine, storage, settings, version)
        h = _wait_serving(router_url, version)
        promote_s.append(time.perf_counter() - t0)
        install_s.append(h["last_swap"].get(f"install_{version}_s", 0.0))
    return {
        "promote_to_served_ms_median": round(statistics.median(promote_s) * 1000, 1),
        "promote_to_served_ms_max": round(max(promote_s) * 1000, 1),
        "router_install_ms_median": round(statistics.median(install_s) * 1000, 1),
        "promotes": n,
        "note": "promote_to_served: commit + Redis publish + registry read + sha256 verify + copy + "
        "load_lora_adapter + flip, seen on /healthz (polled every 10 ms)",
    }


def _p99(xs: list[float]) -> float:
    """Nearest-rank p99: with 100 moves or fewer this is the slowest move."""
    return sorted(xs)[math.ceil(0.99 * len(xs)) - 1]


async def _callers(urls: list[str], key: str, prompt: list, clients: int, stop, counts) -> None:
    """`clients` callers spread over the routers until `stop` is set; counts[0] answers, counts[1] failures."""

    async def caller(i: int, http: httpx.AsyncClient) -> None:
        body = {"model": "tiny", "messages": prompt, "max_tokens": 8, "temperature": 0, "user": f"u{i}"}
        while not stop.is_set():
            try:
                r = await http.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            with counts.get_lock():
                counts[0 if ok else 1] += 1

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        await asyncio.gather(*(caller(i, http) for i in range(clients)))


def _run_callers(*args) -> None:
    asyncio.run(_callers(*args))


class _Load:
    """The callers in a process of their own (as apps are), so their event loop does not hold this process's
    GIL while it times the moves."""

    def __init__(self, urls: list[str], key: str, prompt: list, clients: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.stop, self.counts = ctx.Event(), ctx.Array("l", 2)
        self.proc = ctx.Process(target=_run_callers, args=(urls, key, prompt, clients, self.stop, self.counts))

    @property
    def ok(self) -> int:
        return int(self.counts[0])

    @property
    def failed(self) -> int:
        return int(self.counts[1])

    def __enter__(self) -> _Load:
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.proc.join(timeout=120)


def _moves_under_load(args, settings, engine, storage, key, sources, vllm_urls, work: Path, prompt) -> dict:
    """Registry moves while 20 clients call the routers: one router over both vLLM servers, then two embedded
    replicas (`alignloop deploy serve` processes, the clients spread over both); each with candidates staged
    (the default) and without (the load happens at the move: the baseline)."""
    from support.ports import free_port

    fresh = iter(range(7, _adapters(args.move_rounds) + 1))
    out: dict[str, dict] = {}
    for backend, n_routers, update in [
        ("vllm", 1, {"backend": "vllm", "vllm_urls": vllm_urls}),
        ("embedded", 2, {}),
    ]:
        for staged in (True, False):
            ports = [free_port() for _ in range(n_routers)]
            # the product's default max_resident (4): the active, a rollback target, a canary and a staged one
            pass_update = {**update, "stage_candidates": staged, "max_resident": 4}
            if backend == "vllm":
                pass_update["vllm_lora_root"] = work / f"loras-moves-{staged}"
            procs = [_router_process(settings, p, work / f"moves-{backend}-{p}.log", **pass_update) for p in ports]
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            try:
                for url, proc in zip(urls, procs):
                    _wait_up(url, proc)
                result = _moves(
                    settings, engine, storage, key, sources, urls, prompt, _move_plan(args.move_rounds, fresh)
                )
            finally:
                for proc in procs:
                    proc.terminate()
                    proc.wait(timeout=30)
            result["setup"] = "one router over two vLLM servers" if backend == "vllm" else "two embedded replicas"
            out.setdefault(backend, {})["staged" if staged else "not_staged"] = result
    return out


def _move_plan(rounds: int, fresh_names: Iterator[int]) -> list:
    """Promote a fresh candidate, then rounds that take turns: canary a fresh one at 50%, promote it, roll it
    back; or promote a fresh one straight away and roll it back. Each entry: (kind, move, its arguments)."""
    from deploy import registry

    plan: list = [("promote fresh", registry.promote, (f"a{next(fresh_names)}",))]
    for r in range(rounds):
        fresh = f"a{next(fresh_names)}"
        if r % 2 == 0:
            plan += [("canary fresh", registry.start_canary, (fresh, 0.5))]
            plan += [("promote canary", registry.promote, (fresh,)), ("rollback", registry.rollback, ())]
        else:
            plan += [("promote fresh", registry.promote, (fresh,)), ("rollback", registry.rollback, ())]
    return plan


def _moves(settings, engine, storage, key, sources, urls: list[str], prompt, plan: list) -> dict:
    """Per move, from the commit to the last router serving the new generation (a vLLM router flips only once
    every server holds the routed versions), polled on /healthz, and the routers' own account (`served_s`:
    from hearing the Redis message to the flip)."""
    from alignloop.core.db import session_scope
    from deploy import registry
    from deploy.control import publish_routing_change

    flipped, after_commit, observed, served, phases = [], [], [], [], []
    with _Load(urls, key, prompt, clients=20) as load:
        time.sleep(2)
        for kind, move, move_args in plan:
            if kind.endswith("fresh"):  # registered now, moved STAGE_WAIT_S later, as after an evaluation
                with session_scope(engine) as s:
                    src = sources[move_args[0]]
                    registry.register_adapter(s, src, actor="bench", reason="bench", storage=storage)
                time.sleep(STAGE_WAIT_S)
            wall0, t0 = time.time(), time.perf_counter()
            with session_scope(engine) as s:
                routing = move(s, *move_args, actor="bench", reason="bench", storage=storage)
            published = time.time()
            publish_routing_change(settings.resolved_redis_url(), routing.base_model, channel=settings.control_channel)
            healths = [_wait_generation(url, routing.generation) for url in urls]
            for h in healths:  # the router's clock: when it heard the message, from its flip and the swap's phases
                heard = h["applied_at"] - h["last_swap"].get("wake_s", 0.0) - h["last_swap"]["total_s"]
                h["last_swap"] |= {
                    "commit_s": round(published - wall0, 4),
                    "heard_after_publish_s": round(heard - published, 4),
                }
            observed.append(time.perf_counter() - t0)
            flipped.append(max(h["applied_at"] for h in healths) - wall0)  # the routers' own clocks, same machine
            after_commit.append(flipped[-1] - (published - wall0))
            served.append(max(h["last_swap"].get("wake_s", 0.0) + h["last_swap"]["total_s"] for h in healths))
            phases.append([h["last_swap"] for h in healths])
            time.sleep(0.5)
    return {
        "moves": len(flipped),
        "clients": 20,
        "requests_ok": load.ok,
        "requests_failed": load.failed,
        "move_to_served_everywhere_s_p99": round(_p99(flipped), 3),
        "move_to_served_everywhere_s_median": round(statistics.median(flipped), 3),
        "committed_to_served_everywhere_s_p99": round(_p99(after_commit), 3),
        "committed_to_served_everywhere_s_median": round(statistics.median(after_commit), 3),
        "router_heard_to_flip_s_p99": round(_p99(served), 3),
        "seen_by_polling_s_p99": round(_p99(observed), 3),
        "by_kind_s_max": {
            kind: round(max(f for (k, *_), f in zip(plan, flipped) if k == kind), 3) for kind, *_ in plan
        },
        "slowest_move_phases": phases[flipped.index(max(flipped))],
        "target_s": 1.0,
        "target_met": _p99(after_commit) <= 1.0,
        "target_judged_on": "committed_to_served_everywhere_s_p99",
        "note": "move_to_served_everywhere = from just before the commit to the last router's flip (every server "
        "loaded first), on the routers' own clocks; committed_to_served_everywhere starts once the move's "
        "transaction has committed (the promote has happened: the target is judged on it; the bench's own SQLite "
        "commit, commit_s in the slowest moves' phases, is left out); "
        "seen_by_polling adds /healthz's latency under the load",
    }


def _wait_generation(url: str, generation: int) -> dict:
    return _wait_health(url, lambda serving: serving["generation"] == generation, f"generation {generation}")


def _raw_swap(vllm_url: str, src: Path, n: int) -> float:
    """vLLM's own load + unload of an adapter directory, for scale (median ms)."""
    raw = []
    for i in range(n):
        t0 = time.perf_counter()
        httpx.post(
            f"{vllm_url}/v1/load_lora_adapter", json={"lora_name": f"raw{i}", "lora_path": str(src)}, timeout=60
        ).raise_for_status()
        httpx.post(f"{vllm_url}/v1/unload_lora_adapter", json={"lora_name": f"raw{i}"}, timeout=60).raise_for_status()
        raw.append(time.perf_counter() - t0)
    return round(statistics.median(raw) * 1000, 1)


if __name__ == "__main__":
    main()
