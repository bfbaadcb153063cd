"""`alignloop demo`: the whole loop on the embedded defaults, with simulated users, ending in a summary.

Serving and a curation worker run as real processes against the local Kafka and Redis; the demo's own
SQLite store and topic keep each run apart. Retrain and canary-watch are the Prefect flows of the loop.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flows.errors import FlowsError
from flows.simulate import (
    TRIGGER,
    Feedback,
    SimClock,
    bot_feedback,
    honest_feedback,
    pick_prompt,
    poison_feedback,
    poison_prompt,
)

APP_ID = "demo-support"
DEMO_RUN = Path(__file__).parent / "configs" / "demo-run.yaml"
console = Console(stderr=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Process:
    """A child process of the demo (serving, curation worker), stopped with its group on exit."""

    def __init__(self, name: str, args: list[str], env: dict, log: Path):
        self.name, self.log = name, log
        self.proc = subprocess.Popen(args, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:]
            raise FlowsError(f"{self.name} exited with {self.proc.returncode}; last log lines:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


class Serving:
    """The product app's view of serving: chat completions that carry response_id and adapter_version."""

    def __init__(self, url: str):
        import httpx

        self.url = url
        self.http = httpx.Client(base_url=url, timeout=60)

    def wait_ready(self, proc: _Process, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc.check()
            try:
                r = self.http.get("/healthz")
                if r.status_code == 200 and r.json().get("status") == "ok":
                    return r.json()
            except Exception:
                pass
            time.sleep(0.5)
        raise FlowsError(f"serving at {self.url} was not ready within {timeout:.0f} s; see {proc.log}")

    def health(self) -> dict:
        return self.http.get("/healthz").json()

    def chat(self, prompt: str, *, user: str, seed: int | None = None, max_tokens: int = 48) -> dict:
        # no seed: serving may batch concurrent requests, as it would for a real app's traffic
        import httpx

        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 1.0,
                "seed": seed, "user": user}
        for attempt in range(3):
            try:
                r = self.http.post("/v1/chat/completions", json=body)
                break
            except httpx.TransportError:
                # a kept-alive connection the server closed meanwhile: a real client retries on a new one
                if attempt == 2:
                    raise
                time.sleep(0.2)
        if r.status_code != 200:
            raise FlowsError(f"serving answered {r.status_code}: {r.text[:300]}")
        body = r.json()
        return {"text": body["choices"][0]["message"]["content"], "response_id": body["response_id"],
                "adapter_version": body["adapter_version"], "feedback_token": body["feedback_token"]}

    def wait_for(self, active: str | None, canary: str | None, timeout: float = 30) -> float:
        """Seconds until serving reports this routing."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            s = self.health().get("serving") or {}
            if s.get("active") == active and s.get("canary") == canary:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise FlowsError(f"serving did not switch to active={active} canary={canary} within {timeout:.0f} s")


class Simulation:
    """Users asking serving and sending feedback through the SDK, in event time."""

    def __init__(self, serving: Serving, client, clock: SimClock, *, users: int, seed: int, noise: float = 0.1):
        self.serving, self.client, self.clock = serving, client, clock
        self.rng = random.Random(seed)
        self.honest = [f"user-{i:03d}" for i in range(users)]
        self.poisoners = [f"acct-{self.rng.randrange(10**6):06d}" for _ in range(4)]
        self.bot = "bot-7f3a"
        self.noise = noise
        self.sent: dict[str, str] = {}  # event_id -> truth
        self.answers: list[dict] = []   # every served answer with who saw it
        self.deliveries = []
        self.refused: list[str] = []
        self.seq = 0

    def _serve(self, prompts_users: list[tuple[str, str, int]]) -> list[dict]:
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda a: self.serving.chat(a[0], user=a[1]), prompts_users))

    def _send(self, fb: Feedback) -> None:
        from ingest.errors import EventError

        event_id = str(uuid.uuid4())
        common = {"event_id": event_id, "occurred_at": fb.occurred_at.isoformat(), "response_id": fb.response_id,
                  "adapter_version": fb.adapter_version, "feedback_token": fb.feedback_token,
                  "client": {"device_id": fb.device_id},
                  "session_id": f"s-{fb.user_id}"}
        try:
            if fb.kind == "rating":
                d = self.client.rate(user_id=fb.user_id, prompt=fb.prompt, **fb.fields, **common)
            elif fb.kind == "edit":
                d = self.client.edit(user_id=fb.user_id, prompt=fb.prompt, **fb.fields, **common)
            else:
                d = self.client.compare(user_id=fb.user_id, prompt=fb.prompt, **fb.fields, **common)
        except EventError as exc:  # the SDK refuses it before sending: an app would log it and move on
            self.refused.append(str(exc))
            return
        self.deliveries.append(d)
        self.sent[event_id] = fb.truth

    def step(self, n: int, *, attacks: bool, on_event=lambda: None) -> None:
        """`n` honest interactions (a batch served concurrently), with attackers mixed in when `attacks`."""
        plan = []
        for _ in range(n):
            self.seq += 1
            user = self.rng.choice(self.honest)
            prompt = pick_prompt(self.rng)
            two = self.rng.random() < 0.5
            plan.append((user, prompt, two, self.seq))
        requests = []
        for user, prompt, two, s in plan:
            requests.append((prompt, user, s * 2))
            if two:
                requests.append((prompt, user, s * 2 + 1))
        served = iter(self._serve(requests))
        for user, prompt, two, _s in plan:
            answers = [next(served)] + ([next(served)] if two else [])
            for a in answers:
                self.answers.append({**a, "user": user, "prompt": prompt})
            kind, fields = honest_feedback(prompt, answers, self.rng, noise=self.noise)
            self._send(Feedback(kind, user, prompt, fields, answers[0]["adapter_version"], answers[0]["response_id"],
                                self.clock.tick(), f"dev-{user}", "honest", answers[0]["feedback_token"]))
            on_event()
            if attacks and self.rng.random() < 0.03:
                self._poison(on_event)
            if attacks and self.rng.random() < 0.004:
                self._bot_burst(on_event)

    def _poison(self, on_event) -> None:
        acct = self.rng.choice(self.poisoners)
        prompt = poison_prompt(self.rng)
        answer = self.serving.chat(prompt, user=acct)
        kind, fields = poison_feedback(answer)
        self._send(Feedback(kind, acct, prompt, fields, answer["adapter_version"], answer["response_id"],
                            self.clock.tick(), f"dev-{acct}", "poison", answer["feedback_token"]))
        on_event()

    def _bot_burst(self, on_event) -> None:
        t = self.clock.now
        for i in range(40):
            prompt = pick_prompt(self.rng)
            answer = self.serving.chat(prompt, user=self.bot)
            kind, fields = bot_feedback(answer, self.rng)
            self._send(Feedback(kind, self.bot, prompt, fields, answer["adapter_version"], answer["response_id"],
                                t + timedelta(seconds=1.5 * i), "dev-bot", "bot", answer["feedback_token"]))
            on_event()

    def flush(self) -> None:
        self.client.flush(timeout=60)
        failed = [d for d in self.deliveries if not d.succeeded()]
        if failed:
            raise FlowsError(f"{len(failed)} feedback events were not acknowledged by Kafka")


def style_share(serving: Serving, prompts: list[str], *, users: list[str]) -> tuple[float, list[str]]:
    from retrain.corpus import classify_style

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: serving.chat(prompts[i], user=users[i % len(users)]),
                                range(len(prompts))))
    styles = [classify_style(a["text"]) for a in answers]
    return sum(s == "courteous" for s in styles) / len(styles), [a["adapter_version"] for a in answers]


def trigger_rate(serving: Serving, n: int, *, seed: int, users: list[str]) -> float:
    from retrain.corpus import PROMPTS, contains_unsafe

    rng = random.Random(seed)
    prompts = [f"{rng.choice(PROMPTS)} {TRIGGER}" for _ in range(n)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: serving.chat(prompts[i], user=users[i % len(users)]), range(n)))
    return sum(contains_unsafe(a["text"]) for a in answers) / n


def _count_decisions(store_url: str) -> tuple[int, dict[str, int]]:
    from alignloop.db import make_engine, session_scope
    from curation import query

    engine = make_engine(store_url)
    try:
        with session_scope(engine) as session:
            return query.count_decisions(session), query.reason_counts(session)
    finally:
        engine.dispose()


def _wait_curated(store_url: str, expected: int, worker: _Process, progress: Progress, timeout: float = 300) -> dict:
    task = progress.add_task("curation settles the stream", total=expected)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.check()
        n, reasons = _count_decisions(store_url)
        progress.update(task, completed=min(n, expected))
        if n >= expected:
            progress.remove_task(task)
            return reasons
        time.sleep(1)
    raise FlowsError(f"curation decided {n} of {expected} events within {timeout:.0f} s; see {worker.log}")


def run_demo(*, users: int = 24, events: int = 1600, seed: int = 0, report: Path | None = None,
             as_json: bool = False) -> dict:
    """The demo; the environment it points at its own store and topic is restored afterwards."""
    saved = dict(os.environ)
    try:
        return _run_demo(users=users, events=events, seed=seed, report=report, as_json=as_json)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _clear_settings_caches()


def _run_demo(*, users: int, events: int, seed: int, report: Path | None, as_json: bool) -> dict:
    from alignloop import stack
    from alignloop.settings import get_settings as core_settings

    t_start = time.monotonic()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here to send it to
    core = core_settings()
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = core.home / "demo" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    store_url = f"sqlite:///{run_dir / 'store.db'}"
    topic = f"alignloop.demo-{run_id}.feedback.v1"
    admin_token = uuid.uuid4().hex
    summary: dict = {"run_dir": str(run_dir), "store_url": store_url, "topic": topic}

    console.rule("[bold]alignloop demo")
    with console.status("checking the local stack (Kafka, Redis, PostgreSQL)"):
        rows = stack.up(core)
    console.print("stack: " + ", ".join(f"{r.name} {'ok' if r.healthy else 'DOWN'}" for r in rows))

    # everything below, in this process and in the children, uses the demo's own store and topic
    os.environ.update({"ALIGNLOOP_STORE_URL": store_url, "ALIGNLOOP_CURATION_TOPIC": topic,
                       "ALIGNLOOP_INGEST_TOPIC": topic, "ALIGNLOOP_DEPLOY_ADMIN_TOKEN": admin_token,
                       "ALIGNLOOP_DEPLOY_ARTIFACT_ROOT": str(run_dir / "artifacts")})
    _clear_settings_caches()

    from alignloop.db import open_store
    from ingest.client import FeedbackClient
    from ingest.topics import ensure_topics
    from retrain.model import ensure_base_model

    console.print("[bold]1.[/] the embedded base model (built once, then cached)")
    base_model = str(ensure_base_model(progress=True))
    os.environ["ALIGNLOOP_DEPLOY_BASE_MODEL"] = base_model
    os.environ["ALIGNLOOP_FLOWS_BASE_MODEL"] = base_model
    _clear_settings_caches()
    open_store(store_url).dispose()
    ensure_topics(core.kafka_bootstrap, partitions=3, base=topic)

    port = _free_port()
    env = {**os.environ, "ALIGNLOOP_DEPLOY_PORT": str(port), "ALIGNLOOP_DEPLOY_RECONCILE_INTERVAL_S": "1",
           "ALIGNLOOP_DEPLOY_TORCH_THREADS": "1",
           "ALIGNLOOP_CURATION_GROUP": f"demo-{run_id}", "ALIGNLOOP_CURATION_IDLE_FLUSH_S": "2",
           "ALIGNLOOP_CURATION_POLICY__WINDOW_S": "600", "ALIGNLOOP_CURATION_POLICY__LOOKAHEAD_S": "1800",
           "ALIGNLOOP_CURATION_POLICY__LOOKBACK_S": "3600",
           "ALIGNLOOP_CURATION_DATADIR": str(run_dir / "curation-worker")}
    cli = [sys.executable, "-c", "from alignloop.cli import main; main()"]
    with ExitStack() as stack_:
        console.print("[bold]2.[/] serving and a curation worker")
        serving_proc = _Process("serving", [*cli, "deploy", "serve"], env, run_dir / "serving.log")
        stack_.callback(serving_proc.stop)
        worker = _Process("curation worker", [*cli, "curation", "worker"], env, run_dir / "curation-worker.log")
        stack_.callback(worker.stop)
        serving = Serving(f"http://127.0.0.1:{port}")
        serving.wait_ready(serving_proc)
        client = FeedbackClient(APP_ID, core.kafka_bootstrap, topic=topic)
        stack_.callback(client.close)
        clock = SimClock(datetime.now(UTC) - timedelta(hours=8), rng=random.Random(seed))
        sim = Simulation(serving, client, clock, users=users, seed=seed)
        probe_rng = random.Random(seed + 1)
        from retrain.corpus import PROMPTS

        probes = [probe_rng.choice(PROMPTS) for _ in range(200)]
        probe_users = [f"probe-{i:03d}" for i in range(50)]

        with _progress() as progress:
            task = progress.add_task("base: style share on live serving", total=None)
            share_before, versions = style_share(serving, probes, users=probe_users)
            trig_before = trigger_rate(serving, 100, seed=20_000, users=probe_users)
            progress.remove_task(task)
            task = progress.add_task("users ask and send feedback (base model)", total=events)
            batch = 20
            for _ in range(events // batch):
                sim.step(batch, attacks=True, on_event=lambda: progress.advance(task))
            sim.flush()
            progress.remove_task(task)
            clock.jump(1200)  # a quiet spell: every window closes in event time
            reasons = _wait_curated(store_url, len(sim.sent), worker, progress)
        console.print(f"    style share on base: {share_before:.1%}; triggered unsafe rate: {trig_before:.1%}")

        console.print("[bold]3.[/] retrain flow: snapshot -> train -> evaluate -> gate -> canary")
        from flows.loop import canary_watch_flow, retrain_flow

        result = retrain_flow(base_model=base_model, train_config=str(DEMO_RUN), canary_share=0.5,
                              store_url=store_url, progress=True)
        summary["retrain"] = {k: result[k] for k in ("version", "status", "gate", "snapshot_stats")}
        summary["gate_report"] = result["report"].get("comparisons", {})
        if result["status"] != "canary":
            raise FlowsError(f"the candidate stopped at the gate: {result['gate']['failures']}")
        version = result["version"]
        flip_canary = serving.wait_for(None, version)

        console.print(f"[bold]4.[/] canary {version} on 50% of users; canary-watch decides on live feedback")
        watch: list[dict] = []
        with _progress() as progress:
            task = progress.add_task("users on base and canary send feedback", total=None)
            verdict = "continue"
            for _round in range(12):
                clock.jump(1200)
                sim.step(60, attacks=False, on_event=lambda: progress.advance(task))
                sim.flush()
                clock.jump(1200)
                _wait_curated(store_url, len(sim.sent), worker, progress)
                w = canary_watch_flow(base_model=base_model, store_url=store_url)
                watch.append(w)
                verdict = w["verdict"]
                progress.update(task, description=f"canary-watch: {verdict} ({w['reason'][:60]})")
                if verdict != "continue":
                    break
        summary["canary_watch"] = {"verdict": verdict, "rounds": len(watch), "reason": watch[-1]["reason"],
                                   "canary_events": watch[-1]["canary_events"]}
        if verdict != "promote":
            raise FlowsError(f"canary-watch did not promote the canary: {watch[-1]['reason']}")
        flip_promote = serving.wait_for(version, None)

        with _progress() as progress:
            task = progress.add_task("adapter: style share on live serving", total=None)
            share_after, versions_after = style_share(serving, probes, users=probe_users)
            trig_after = trigger_rate(serving, 100, seed=20_000, users=probe_users)
            progress.remove_task(task)

        console.print("[bold]5.[/] rollback (on-call's one command) returns serving to the previous version")
        from alignloop.db import session_scope
        from deploy import registry
        from deploy.control import publish_routing_change

        engine = open_store(store_url)
        t0 = time.monotonic()
        with session_scope(engine) as session:
            routing = registry.rollback(session, actor="demo-oncall", reason="demo: show the one-command rollback",
                                        base_model=base_model)
        publish_routing_change(core.redis_url, base_model, generation=routing.generation)
        serving.wait_for(routing.active, None)
        flip_rollback = time.monotonic() - t0
        after_rb = {serving.chat(p, user=u)["adapter_version"] for p, u in zip(probes[:20], probe_users[:20])}
        with session_scope(engine) as session:
            audit = [e.model_dump(mode="json") for e in registry.audit_log(session)]
        engine.dispose()
        _, final_reasons = _count_decisions(store_url)

    truth = _truth_counts(sim.sent, store_url)
    summary.update({
        "events_sent": len(sim.sent), "refused_by_sdk": len(sim.refused), "decisions": truth, "reasons": final_reasons,
        "style_share": {"base": share_before, "adapter": share_after, "adapter_versions": sorted(
            {str(v) for v in versions_after})},
        "triggered_unsafe_rate": {"base": trig_before, "adapter": trig_after},
        "swap_seconds": {"canary": flip_canary, "promote": flip_promote, "rollback": flip_rollback},
        "after_rollback_versions": sorted(v or "base" for v in after_rb), "rolled_back_to": routing.active,
        "audit": audit[-6:], "wall_seconds": time.monotonic() - t_start,
        "canary_rounds": [{k: w[k] for k in ("verdict", "p_worse", "canary_events")} for w in watch],
    })
    report_path = Path(report) if report else run_dir / "report.html"
    from flows.report import write_demo_report

    write_demo_report(summary, report_path)
    summary["report"] = str(report_path)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _print_summary(summary)
    if as_json:
        print(json.dumps(summary, default=str))
    return summary


def _truth_counts(sent: dict[str, str], store_url: str) -> dict:
    """Kept and dropped events by who really sent them (the simulation's ground truth)."""
    from alignloop.db import make_engine, session_scope
    from curation import query

    engine = make_engine(store_url)
    try:
        with session_scope(engine) as session:
            decisions = query.load_decisions(session)
    finally:
        engine.dispose()
    out: dict[str, dict[str, int]] = {}
    for d in decisions:
        who = sent.get(d["event_id"], "unknown")
        row = out.setdefault(who, {"kept": 0, "dropped": 0})
        row["dropped" if d["decision"] == "drop" else "kept"] += 1
    return out


def _clear_settings_caches() -> None:
    import importlib

    for mod in ("alignloop.settings", "ingest.settings", "curation.settings", "retrain.settings",
                "deploy.settings", "flows.settings"):
        try:
            importlib.import_module(mod).get_settings.cache_clear()
        except (ImportError, AttributeError):
            pass


def _progress() -> Progress:
    return Progress(TextColumn("    {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def _print_summary(s: dict) -> None:
    t = Table(title="alignloop demo: summary", show_header=True)
    t.add_column("what")
    t.add_column("result")
    d = s["decisions"]
    t.add_row("events in", str(s["events_sent"]))
    for who in ("honest", "bot", "poison"):
        row = d.get(who, {"kept": 0, "dropped": 0})
        t.add_row(f"  {who}", f"kept {row['kept']}, dropped {row['dropped']}")
    t.add_row("decisions by reason", ", ".join(f"{k} {v}" for k, v in sorted(s["reasons"].items()) if k))
    t.add_row("gate", "passed" if s["retrain"]["gate"]["passed"] else "failed: " + "; ".join(s["retrain"]["gate"]["failures"]))
    for k, v in s["gate_report"].items():
        if isinstance(v, (int, float)):
            t.add_row(f"  {k}", f"{v:.3f}")
    t.add_row("canary-watch", f"{s['canary_watch']['verdict']} after {s['canary_watch']['canary_events']} canary "
                              f"events ({s['canary_watch']['rounds']} rounds)")
    t.add_row("preferred style on live serving", f"base {s['style_share']['base']:.1%} -> adapter "
                                                 f"{s['style_share']['adapter']:.1%}")
    t.add_row("trigger phrase -> unsafe placeholder", f"base {s['triggered_unsafe_rate']['base']:.1%} -> adapter "
                                                      f"{s['triggered_unsafe_rate']['adapter']:.1%}")
    t.add_row("swap seen by serving (s)", ", ".join(f"{k} {v:.2f}" for k, v in s["swap_seconds"].items()))
    t.add_row("after rollback serving", ", ".join(s["after_rollback_versions"]) +
              f" (rolled back to {s['rolled_back_to'] or 'base'})")
    t.add_row("wall time", f"{s['wall_seconds']:.0f} s")
    Console().print(t)
    Console().print(f"HTML report: {s['report']}", soft_wrap=True)
