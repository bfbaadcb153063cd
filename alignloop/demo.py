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
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flows.errors import FlowsError
from flows.simulate import (
    TRIGGER,
    Feedback,
    SimClock,
    Taste,
    bot_feedback,
    honest_feedback,
    pick_prompt,
    poison_feedback,
    poison_prompt,
)

if TYPE_CHECKING:
    from alignloop.core.settings import CoreSettings
    from curation.settings import CurationSettings
    from deploy.settings import DeploySettings
    from ingest.client import Delivery, FeedbackClient
    from ingest.settings import IngestSettings

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
        # the child keeps its own copy of the log's descriptor; ours is closed once it started
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

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

    def __init__(self, url: str, key: str):
        import httpx

        self.url = url
        self.http = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"})

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

        body = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "seed": seed,
            "user": user,
        }
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
        return {
            "text": body["choices"][0]["message"]["content"],
            "response_id": body["response_id"],
            "adapter_version": body["adapter_version"],
            "feedback_token": body["feedback_token"],
        }

    def wait_for(self, active: str | None, canary: str | None, timeout: float = 30) -> float:
        """Seconds until serving reports this routing."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            s = self.health().get("serving") or {}
            if s.get("active") == active and s.get("canary") == canary:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise FlowsError(f"serving did not switch to active={active} canary={canary} within {timeout:.0f} s")


def _make_serving_key(engine) -> str:
    """The demo's own serving key (its simulated app is the one caller), with room for its 16 parallel users."""
    from alignloop.core.db import session_scope
    from deploy.keys import create_serving_key

    try:
        with session_scope(engine) as session:
            return create_serving_key(session, "demo", created_by="demo", rate_per_s=1000, burst=1000)[1]
    finally:
        engine.dispose()


class Simulation:
    """Users asking serving and sending feedback through the SDK, in event time."""

    def __init__(
        self, serving: Serving, client: FeedbackClient, clock: SimClock, *, users: int, seed: int, noise: float = 0.1
    ):
        self.serving, self.client, self.clock = serving, client, clock
        self.rng = random.Random(seed)
        self.honest = [f"user-{i:03d}" for i in range(users)]
        self.poisoners = [f"acct-{self.rng.randrange(10**6):06d}" for _ in range(4)]
        self.bot = "bot-7f3a"
        self.noise = noise
        self.taste = Taste()  # what honest users want; the demo's second turn adds the brief sign-off
        self.sent: dict[str, str] = {}  # event_id -> truth
        self.answers: list[dict] = []  # every served answer with who saw it
        self.deliveries: list[Delivery] = []
        self.refused: list[str] = []
        self.seq = 0

    def _serve(self, prompts_users: list[tuple[str, str, int]]) -> list[dict]:
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda a: self.serving.chat(a[0], user=a[1]), prompts_users))

    def _send(self, fb: Feedback) -> None:
        from ingest.errors import EventError

        event_id = str(uuid.uuid4())
        common: dict[str, Any] = {
            "event_id": event_id,
            "occurred_at": fb.occurred_at.isoformat(),
            "response_id": fb.response_id,
            "adapter_version": fb.adapter_version,
            "feedback_token": fb.feedback_token,
            "client": {"device_id": fb.device_id},
            "session_id": f"s-{fb.user_id}",
        }
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
            kind, fields = honest_feedback(prompt, answers, self.rng, noise=self.noise, taste=self.taste)
            self._send(
                Feedback(
                    kind,
                    user,
                    prompt,
                    fields,
                    answers[0]["adapter_version"],
                    answers[0]["response_id"],
                    self.clock.tick(),
                    f"dev-{user}",
                    "honest",
                    answers[0]["feedback_token"],
                )
            )
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
        self._send(
            Feedback(
                kind,
                acct,
                prompt,
                fields,
                answer["adapter_version"],
                answer["response_id"],
                self.clock.tick(),
                f"dev-{acct}",
                "poison",
                answer["feedback_token"],
            )
        )
        on_event()

    def _bot_burst(self, on_event) -> None:
        t = self.clock.now
        for i in range(40):
            prompt = pick_prompt(self.rng)
            answer = self.serving.chat(prompt, user=self.bot)
            kind, fields = bot_feedback(answer, self.rng)
            self._send(
                Feedback(
                    kind,
                    self.bot,
                    prompt,
                    fields,
                    answer["adapter_version"],
                    answer["response_id"],
                    t + timedelta(seconds=1.5 * i),
                    "dev-bot",
                    "bot",
                    answer["feedback_token"],
                )
            )
            on_event()

    def flush(self) -> None:
        self.client.flush(timeout=60)
        failed = [d for d in self.deliveries if not d.succeeded()]
        if failed:
            raise FlowsError(f"{len(failed)} feedback events were not acknowledged by Kafka")


def live_shares(serving: Serving, prompts: list[str], *, users: list[str]) -> dict:
    """Each preference's share among live answers to fixed probe prompts, and the versions that gave them."""
    from retrain.corpus import classify_style, has_brief_signoff

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: serving.chat(prompts[i], user=users[i % len(users)]), range(len(prompts))))
    n = len(answers)
    return {
        "courteous": sum(classify_style(a["text"]) == "courteous" for a in answers) / n,
        "brief_signoff": sum(has_brief_signoff(a["text"]) for a in answers) / n,
        "versions": sorted({str(a["adapter_version"] or "base") for a in answers}),
    }


def trigger_rate(serving: Serving, n: int, *, seed: int, users: list[str]) -> float:
    """The share of live answers to prompts with the poisoners' trigger that the demo's marker probe flags."""
    from retrain.corpus import PROMPTS
    from retrain.probes import Detector, resolve_probes

    rng = random.Random(seed)
    prompts = [f"{rng.choice(PROMPTS)} {TRIGGER}" for _ in range(n)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: serving.chat(prompts[i], user=users[i % len(users)]), range(n)))
    return Detector(resolve_probes(["demo-marker"])[0]).rate([a["text"] for a in answers])


def _count_decisions(store_url: str) -> tuple[int, dict[str, int]]:
    from alignloop.core.db import make_engine, session_scope
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


@dataclass(frozen=True)
class DemoSettings:
    """One demo run's configuration, built once from its options (`demo_settings`) and passed down: the core,
    ingest, curation and deploy settings pointed at the run's own store, topic and artifacts.

    This process never changes its environment; its children (serving, the curation worker) are started with
    these settings as theirs (`child_env`).
    """

    run_id: str
    run_dir: Path
    core: CoreSettings
    ingest: IngestSettings
    curation: CurationSettings
    deploy: DeploySettings
    users: int
    events: int
    turns: int
    turn_events: int
    seed: int

    @property
    def store_url(self) -> str:
        return self.core.resolved_store_url

    @property
    def topic(self) -> str:
        return self.curation.topic

    @property
    def artifact_root(self) -> str:
        return str(self.deploy.artifact_root)

    @property
    def base_model(self) -> str:
        if not self.deploy.base_model:
            raise FlowsError("the demo's base model is not resolved yet (`with_base_model`)")
        return self.deploy.base_model

    def with_base_model(self, base_model: str) -> DemoSettings:
        return replace(self, deploy=self.deploy.model_copy(update={"base_model": base_model}))

    def child_env(self) -> dict[str, str]:
        """The environment of the demo's child processes: this one's, with the demo's settings over it."""
        c, d, policy = self.curation, self.deploy, self.curation.policy
        demo = {
            "ALIGNLOOP_HOME": str(self.core.home),
            "ALIGNLOOP_KAFKA_BOOTSTRAP": self.core.kafka_bootstrap,
            "ALIGNLOOP_REDIS_URL": self.core.redis_url,
            "ALIGNLOOP_STORE_URL": self.store_url,
            "ALIGNLOOP_INGEST_TOPIC": self.ingest.topic,
            "ALIGNLOOP_CURATION_TOPIC": c.topic,
            "ALIGNLOOP_CURATION_GROUP": c.group,
            "ALIGNLOOP_CURATION_IDLE_FLUSH_S": str(c.idle_flush_s),
            "ALIGNLOOP_CURATION_DATADIR": str(c.datadir),
            "ALIGNLOOP_CURATION_POLICY__WINDOW_S": str(policy.window_s),
            "ALIGNLOOP_CURATION_POLICY__LOOKAHEAD_S": str(policy.lookahead_s),
            "ALIGNLOOP_CURATION_POLICY__LOOKBACK_S": str(policy.lookback_s),
            "ALIGNLOOP_DEPLOY_ARTIFACT_ROOT": self.artifact_root,
            "ALIGNLOOP_DEPLOY_BASE_MODEL": self.base_model,
            "ALIGNLOOP_DEPLOY_PORT": str(d.port),
            "ALIGNLOOP_DEPLOY_RECONCILE_INTERVAL_S": str(d.reconcile_interval_s),
            "ALIGNLOOP_DEPLOY_TORCH_THREADS": str(d.torch_threads),
        }
        return {**os.environ, **demo}


def demo_settings(
    *,
    users: int = 24,
    events: int = 1600,
    turns: int = 2,
    turn_events: int | None = None,
    seed: int = 0,
    core: CoreSettings | None = None,
) -> DemoSettings:
    """A new run's settings: the configured ones (read once), with a store, topic, group, artifact root and
    serving port of the run's own, and the demo's curation windows and idle flush."""
    from alignloop.core.settings import get_settings as core_settings
    from curation.settings import get_settings as curation_settings
    from deploy.settings import get_settings as deploy_settings
    from ingest.settings import get_settings as ingest_settings

    if turns < 1:
        raise FlowsError(f"`turns` must be at least 1; got {turns}")
    core = core or core_settings()
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = core.home / "demo" / run_id
    topic = f"alignloop.demo-{run_id}.feedback.v1"
    curation = curation_settings()
    # the worker settles the last open windows once it has been idle IDLE_FLUSH_S; the simulated users pause
    # between batches while serving answers, and on a busy machine a short idle time closed windows under
    # them (their later feedback was then `late_event`), so it is well above one batch's pause
    curation = curation.model_copy(
        update={
            "topic": topic,
            "group": f"demo-{run_id}",
            "idle_flush_s": 10.0,
            "datadir": str(run_dir / "curation-worker"),
            "policy": curation.policy.model_copy(update={"window_s": 600, "lookahead_s": 1800, "lookback_s": 3600}),
        }
    )
    deploy = deploy_settings().model_copy(
        update={
            "artifact_root": run_dir / "artifacts",
            "port": _free_port(),
            "reconcile_interval_s": 1.0,
            "torch_threads": 1,
        }
    )
    core = core.model_copy(update={"store_url": f"sqlite:///{run_dir / 'store.db'}"})
    return DemoSettings(
        run_id=run_id,
        run_dir=run_dir,
        core=core,
        ingest=ingest_settings().model_copy(update={"topic": topic}),
        curation=curation,
        deploy=deploy,
        users=users,
        events=events,
        turns=turns,
        turn_events=turn_events or events,
        seed=seed,
    )


def run_demo(
    *,
    users: int = 24,
    events: int = 1600,
    turns: int = 2,
    turn_events: int | None = None,
    seed: int = 0,
    report: Path | None = None,
    as_json: bool = False,
    strict: bool = True,
    core: CoreSettings | None = None,
) -> dict:
    """The demo, on its own store, topic and artifacts (`demo_settings`; `core`: the core settings, default the
    configured ones).

    `strict`: raise FlowsError (after writing the summary) when a turn the simulated users should like was not
    promoted; without it the summary says so and the caller judges.
    """
    settings = demo_settings(users=users, events=events, turns=turns, turn_events=turn_events, seed=seed, core=core)
    return _run_demo(settings, report=report, as_json=as_json, strict=strict)


class _Demo:
    """The pieces one demo run works with: serving, the simulation, the store, and the live probes."""

    def __init__(self, settings: DemoSettings, *, serving: Serving, sim: Simulation, clock: SimClock, worker: _Process):
        self.settings, self.serving, self.sim, self.clock, self.worker = settings, serving, sim, clock, worker
        self.store_url, self.base_model = settings.store_url, settings.base_model
        self.redis_url = settings.core.redis_url
        from retrain.corpus import PROMPTS

        probe_rng = random.Random(settings.seed + 1)
        self.probes = [probe_rng.choice(PROMPTS) for _ in range(200)]
        self.probe_users = [f"probe-{i:03d}" for i in range(50)]

    def measure(self, label: str) -> dict:
        with _progress() as progress:
            task = progress.add_task(f"{label}: preferences on live serving", total=None)
            shares = live_shares(self.serving, self.probes, users=self.probe_users)
            shares["triggered_unsafe"] = trigger_rate(self.serving, 100, seed=20_000, users=self.probe_users)
            progress.remove_task(task)
        return {"after": label, **shares}

    def feed(self, n: int, label: str) -> None:
        """`n` interactions of users with serving, attackers included, until curation has decided them all."""
        with _progress() as progress:
            task = progress.add_task(f"users ask and send feedback ({label})", total=n)
            batch = 20
            for _ in range(max(1, n // batch)):
                self.sim.step(batch, attacks=True, on_event=lambda: progress.advance(task))
            self.sim.flush()
            progress.remove_task(task)
            self.clock.jump(1200)  # a quiet spell: every window closes in event time
            _wait_curated(self.store_url, len(self.sim.sent), self.worker, progress)

    def watch_canary(self, version: str) -> tuple[str, list[dict]]:
        """Canary-watch on live feedback until it promotes or rolls back (at most 12 rounds of 60 interactions)."""
        from flows.loop import canary_watch_flow

        watch: list[dict] = []
        verdict = "continue"
        with _progress() as progress:
            task = progress.add_task("users on the active version and the canary send feedback", total=None)
            for _round in range(12):
                self.clock.jump(1200)
                self.sim.step(60, attacks=False, on_event=lambda: progress.advance(task))
                self.sim.flush()
                self.clock.jump(1200)
                _wait_curated(self.store_url, len(self.sim.sent), self.worker, progress)
                w = canary_watch_flow(
                    base_model=self.base_model, store_url=self.store_url, artifact_root=self.settings.artifact_root
                )
                watch.append(w)
                verdict = w["verdict"]
                progress.update(task, description=f"canary-watch: {verdict} ({w['reason'][:60]})")
                if verdict != "continue":
                    break
        return verdict, watch

    def turn(self, k: int) -> dict:
        """One turn: retrain over what serves now, then canary-watch; the outcome and what serving shows after."""
        from flows.loop import retrain_flow

        before = self.serving.health().get("serving") or {}
        # the flow returns a Completed state, so the caller gets its data; Prefect's types cannot say that
        result = cast(
            dict[str, Any],
            retrain_flow(
                base_model=self.base_model,
                train_config=str(DEMO_RUN),
                canary_share=0.5,
                store_url=self.store_url,
                progress=True,
                artifact_root=self.settings.artifact_root,
            ),
        )
        from retrain.report import EvaluationReport, GateResult

        gate = GateResult.model_validate(result["gate"]) if result.get("gate") else None
        report = EvaluationReport.model_validate(result["report"]) if result.get("report") else None
        entry: dict = {
            "turn": k,
            "version": result.get("version"),
            "parent_version": result.get("parent"),
            "status": result["status"],
            "data": result.get("turn"),
            "gate": {"passed": result["status"] == "canary", "failures": gate.failures if gate else []},
            "gate_report": report.comparisons.model_dump() if report else {},
            "snapshot_stats": result.get("snapshot_stats"),
        }
        if result["status"] == "skipped":
            entry.update(outcome="skipped", reason=result["reason"])
            return entry
        if result["status"] != "canary":
            entry["outcome"] = "rejected"
            return entry
        version = result["version"]
        entry["swap_seconds"] = {"canary": self.serving.wait_for(before.get("active"), version)}
        verdict, watch = self.watch_canary(version)
        entry["canary_watch"] = {
            "verdict": verdict,
            "rounds": len(watch),
            "reason": watch[-1]["reason"],
            "canary_events": watch[-1]["canary_events"],
            "trace": [{k_: w.get(k_) for k_ in ("verdict", "p_worse", "canary_events")} for w in watch],
        }
        if verdict == "promote":
            entry["outcome"] = "promoted"
            entry["swap_seconds"]["promote"] = self.serving.wait_for(version, None)
        elif verdict == "rollback":
            entry["outcome"] = "rolled_back"
            self.serving.wait_for(before.get("active"), None)
        else:
            entry["outcome"] = "undecided"
        return entry

    def rollback(self) -> dict:
        """On-call's one command, timed until serving follows."""
        from alignloop.core.db import session_scope
        from deploy import registry
        from deploy.artifacts import LocalArtifactStorage
        from deploy.control import publish_routing_change
        from flows.store import open_shared_store

        engine = open_shared_store(self.store_url)
        try:
            t0 = time.monotonic()
            with session_scope(engine) as session:
                routing = registry.rollback(
                    session,
                    actor="demo-oncall",
                    reason="demo: show the one-command rollback",
                    base_model=self.base_model,
                    storage=LocalArtifactStorage(self.settings.artifact_root),
                )
            publish_routing_change(self.redis_url, self.base_model, generation=routing.generation)
            self.serving.wait_for(routing.active, None)
            seconds = time.monotonic() - t0
            seen = {
                self.serving.chat(p, user=u)["adapter_version"] for p, u in zip(self.probes[:20], self.probe_users[:20])
            }
            with session_scope(engine) as session:
                audit = [e.model_dump(mode="json") for e in registry.audit_log(session)]
        finally:
            engine.dispose()
        return {
            "rolled_back_to": routing.active,
            "seconds": seconds,
            "after_rollback_versions": sorted(v or "base" for v in seen),
            "audit": audit,
        }


def _run_demo(settings: DemoSettings, *, report: Path | None, as_json: bool, strict: bool) -> dict:
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    t_start = time.monotonic()
    console.rule("[bold]alignloop demo")
    settings = _prepare(settings)
    # no network here to send Prefect's analytics to (an explicit setting in the environment wins)
    analytics = {} if "PREFECT_SERVER_ANALYTICS_ENABLED" in os.environ else {PREFECT_SERVER_ANALYTICS_ENABLED: False}
    with ExitStack() as stack_:
        stack_.enter_context(temporary_settings(updates=analytics))
        demo = _start(settings, stack_)
        shares, turn_log = _turns(settings, demo)
        console.print(
            f"[bold]{3 + 2 * settings.turns}.[/] rollback (on-call's one command) returns serving to the "
            "previous version"
        )
        rb = demo.rollback()
        _, final_reasons = _count_decisions(settings.store_url)

    summary: dict = {"run_dir": str(settings.run_dir), "store_url": settings.store_url, "topic": settings.topic}
    summary.update(
        {
            "events_sent": len(demo.sim.sent),
            "refused_by_sdk": len(demo.sim.refused),
            "decisions": _truth_counts(demo.sim.sent, settings.store_url),
            "reasons": final_reasons,
            "turns": turn_log,
            "live_shares": shares,
            "after_rollback_versions": rb["after_rollback_versions"],
            "rolled_back_to": rb["rolled_back_to"],
            "swap_seconds": {"rollback": rb["seconds"]},
            "audit": rb["audit"][-10:],
            "wall_seconds": time.monotonic() - t_start,
        }
    )
    _write_summary(summary, settings.run_dir, report, as_json)
    missed = [f"turn {t['turn']} was {t['outcome']}" for t in turn_log if t["outcome"] != "promoted"]
    if missed and strict:
        raise FlowsError(
            "the demo's users should have had every turn promoted: "
            + "; ".join(missed)
            + f" (see {settings.run_dir / 'summary.json'})"
        )
    return summary


def _prepare(settings: DemoSettings) -> DemoSettings:
    """The stack up, the run's directory, the base model (built once, then cached) and the topic."""
    from alignloop.core import stack
    from ingest.topics import ensure_topics
    from retrain.model import ensure_base_model

    with console.status("checking the local stack (Kafka, Redis, PostgreSQL)"):
        rows = stack.up(settings.core)
    console.print("stack: " + ", ".join(f"{r.name} {'ok' if r.healthy else 'DOWN'}" for r in rows))
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    console.print("[bold]1.[/] the embedded base model (built once, then cached)")
    settings = settings.with_base_model(str(ensure_base_model(progress=True)))
    ensure_topics(settings.core.kafka_bootstrap, partitions=3, base=settings.topic)
    return settings


def _start(settings: DemoSettings, stack_: ExitStack) -> _Demo:
    """Serving and a curation worker as child processes, and the simulated users of the product app."""
    from alignloop.core.kafka_auth import kafka_auth
    from flows.store import open_shared_store
    from ingest.client import FeedbackClient

    console.print("[bold]2.[/] serving and a curation worker")
    serving_key = _make_serving_key(open_shared_store(settings.store_url))
    env, run_dir = settings.child_env(), settings.run_dir
    cli = [sys.executable, "-c", "from alignloop.cli import main; main()"]
    serving_proc = _Process("serving", [*cli, "deploy", "serve"], env, run_dir / "serving.log")
    stack_.callback(serving_proc.stop)
    worker = _Process("curation worker", [*cli, "curation", "worker"], env, run_dir / "curation-worker.log")
    stack_.callback(worker.stop)
    serving = Serving(f"http://127.0.0.1:{settings.deploy.port}", serving_key)
    serving.wait_ready(serving_proc)
    client = FeedbackClient(APP_ID, settings.core.kafka_bootstrap, topic=settings.topic, **kafka_auth(settings.core))
    stack_.callback(client.close)
    # event time runs hours ahead of the wall clock (windows and rate limits see real gaps); it starts far
    # enough back that no turn's feedback is dated in the future, which curation refuses
    clock = SimClock(datetime.now(UTC) - timedelta(hours=12 * settings.turns), rng=random.Random(settings.seed))
    sim = Simulation(serving, client, clock, users=settings.users, seed=settings.seed)
    return _Demo(settings, serving=serving, sim=sim, clock=clock, worker=worker)


def _turns(settings: DemoSettings, demo: _Demo) -> tuple[list[dict], list[dict]]:
    """Live shares on the base, then each turn (feedback, retrain, canary-watch); (live shares, turn log)."""
    shares = [demo.measure("base")]
    console.print(
        f"    base: courteous {shares[0]['courteous']:.1%}, brief sign-off "
        f"{shares[0]['brief_signoff']:.1%}, triggered unsafe {shares[0]['triggered_unsafe']:.1%}"
    )
    turn_log: list[dict] = []
    for k in range(1, settings.turns + 1):
        if k == 2:
            demo.sim.taste = Taste(brief_signoff=True)
            console.print(
                '[bold]   [/] the users\' taste shifts: they now also want the brief sign-off ("Have a wonderful day!")'
            )
        step = 3 + 2 * (k - 1)
        console.print(f"[bold]{step}.[/] turn {k}: users on what serves now send feedback; curation filters")
        demo.feed(settings.events if k == 1 else settings.turn_events, f"turn {k}")
        console.print(f"[bold]{step + 1}.[/] turn {k}: retrain over what serves now -> gate -> canary -> canary-watch")
        entry = demo.turn(k)
        turn_log.append(entry)
        console.print(
            f"    turn {k}: {entry['version']} over {entry['parent_version'] or 'the base'}: "
            f"{entry['outcome']}" + (f" ({entry['canary_watch']['reason']})" if entry.get("canary_watch") else "")
        )
        if entry["outcome"] == "promoted":
            shares.append(demo.measure(f"turn {k}"))
            entry["live"] = shares[-1]
    return shares, turn_log


def _write_summary(summary: dict, run_dir: Path, report: Path | None, as_json: bool) -> None:
    """The HTML report, summary.json and the table (and the JSON on stdout when asked)."""
    from flows.report import write_demo_report

    report_path = Path(report) if report else run_dir / "report.html"
    write_demo_report(summary, report_path)
    summary["report"] = str(report_path)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _print_summary(summary)
    if as_json:
        print(json.dumps(summary, default=str))


def _truth_counts(sent: dict[str, str], store_url: str) -> dict:
    """Kept and dropped events by who really sent them (the simulation's ground truth)."""
    from alignloop.core.db import make_engine, session_scope
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


def _progress() -> Progress:
    return Progress(
        TextColumn("    {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


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
    for turn in s["turns"]:
        gate = "passed" if turn["gate"]["passed"] else "failed: " + "; ".join(turn["gate"]["failures"])
        t.add_row(
            f"turn {turn['turn']}",
            f"{turn['version']} over {turn['parent_version'] or 'the base'}: gate {gate}; {turn['outcome']}",
        )
        if turn.get("canary_watch"):
            cw = turn["canary_watch"]
            t.add_row(
                "  canary-watch", f"{cw['verdict']} after {cw['canary_events']} canary events ({cw['rounds']} rounds)"
            )
        data = turn.get("data") or {}
        if data:
            t.add_row("  trained on", f"{data.get('new_pairs')} new pairs, {data.get('replay_pairs')} replayed")
    for sh in s["live_shares"]:
        t.add_row(
            f"live serving after {sh['after']}",
            f"courteous {sh['courteous']:.1%}, brief sign-off "
            f"{sh['brief_signoff']:.1%}, triggered unsafe "
            f"{sh['triggered_unsafe']:.1%} ({', '.join(sh['versions'])})",
        )
    t.add_row(
        "after rollback serving",
        ", ".join(s["after_rollback_versions"])
        + f" (rolled back to {s['rolled_back_to'] or 'base'} in {s['swap_seconds']['rollback']:.2f} s)",
    )
    t.add_row("wall time", f"{s['wall_seconds']:.0f} s")
    Console().print(t)
    Console().print(f"HTML report: {s['report']}", soft_wrap=True)
