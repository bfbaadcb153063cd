"""The loop's Prefect flows: retrain (snapshot -> train -> evaluate -> gate -> register -> canary),
canary-watch (sequential test on live feedback -> promote or roll back) and replay (re-curate a Kafka range).

Tasks are thin wrappers of domain functions; only I/O tasks retry; training never retries blindly.
Each task opens its own store session: the transaction belongs to the task, never to a domain function.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.states import Completed

from alignloop.core.contracts import TurnRecord
from flows.canary import ArmStats, CanaryPolicy, CanaryVerdict, decide_canary
from flows.errors import FlowsError
from flows.turns import TurnPlan, VersionView, plan_turn
from retrain.report import EvaluationReport, GateResult

if TYPE_CHECKING:
    from retrain.snapshot import Snapshot, TurnSelection


class _TaskOptions(TypedDict, total=False):
    retries: int
    retry_delay_seconds: int
    cache_policy: CachePolicy


IO: _TaskOptions = {"retries": 2, "retry_delay_seconds": 2, "cache_policy": NO_CACHE}
COMPUTE: _TaskOptions = {"retries": 0, "cache_policy": NO_CACHE}


def _store_url(store_url: str | None) -> str:
    from alignloop.core.settings import get_settings

    # a run parameter names where the store is, never its password (Prefect keeps parameters): that comes from
    # the settings of the process that runs the flow
    return get_settings().with_store_password(store_url) if store_url else get_settings().resolved_store_url


def _redis_url(redis_url: str | None) -> str:
    from alignloop.core.settings import get_settings

    return get_settings().with_redis_password(redis_url) if redis_url else get_settings().redis_url


@contextmanager
def _session(store_url: str | None):
    """One transaction on the store for one task: the task owns it, domain functions never commit."""
    from alignloop.core.db import session_scope
    from flows.store import open_shared_store

    engine = open_shared_store(_store_url(store_url))
    try:
        with session_scope(engine) as session:
            yield session
    finally:
        engine.dispose()


def _storage(artifact_root: str | None):
    """The registry's artifact storage under `artifact_root`; None: deploy's configured one."""
    if artifact_root is None:
        return None
    from deploy.artifacts import LocalArtifactStorage

    return LocalArtifactStorage(Path(artifact_root).resolve())


def base_key(base_model: str) -> str:
    """A short stable name for a base model, for concurrency limits and directories."""
    return hashlib.sha256(base_model.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- tasks
@task(name="resolve-base-model", **COMPUTE)
def resolve_base_task(base_model: str | None) -> str:
    from retrain.model import resolve_base

    return resolve_base(base_model)


@task(name="plan-turn", **IO)
def plan_turn_task(
    store_url: str | None, base_model: str, artifact_root: str | None = None
) -> tuple[TurnPlan, str | None]:
    """The turn's plan from the registry, and the active adapter's verified local directory (None: base serves)."""
    from deploy import registry

    with _session(store_url) as session:
        routing = registry.get_routing(session, base_model)
        views = [
            VersionView(
                version=v.version,
                parent_version=v.parent_version,
                status=str(v.status),
                turn=v.manifest.dataset.turn,
                trained_event_ids=frozenset(v.lineage.event_ids),
            )
            for v in registry.list_versions(session, base_model)
        ]
        active_dir = (
            str(registry.local_artifact_dir(registry.get_version(session, routing.active), _storage(artifact_root)))
            if routing.active
            else None
        )
    return plan_turn(routing.active, routing.canary, views), active_dir


@task(name="snapshot", **IO)
def snapshot_task(
    store_url: str | None, run_config, plan: TurnPlan, out_dir: Path
) -> tuple[Snapshot | None, TurnSelection]:
    """The turn's data: new records since the previous turn plus a bounded replay, split into a snapshot."""
    from retrain.snapshot import build_snapshot, load_snapshot_inputs, save_snapshot, select_turn_records

    with _session(store_url) as session:
        pairs, unpaired = load_snapshot_inputs(session)
    selection = select_turn_records(
        pairs, unpaired, since=plan.since, replay_ids=plan.replay_ids, replay_max=run_config.turns.replay_max
    )
    # the data trigger counts new pairs against this mark
    (out_dir / "last_snapshot.json").write_text(
        json.dumps({"pairs_total": len(pairs), "unpaired_total": len(unpaired), "turn": selection.as_dict()})
    )
    if selection.new_pairs + selection.new_unpaired == 0:
        return None, selection
    snap = build_snapshot(selection.pairs, selection.unpaired, run_config.snapshot)
    target = out_dir / f"snapshot-{snap.hash[:12]}"
    if not target.exists():
        save_snapshot(snap, target)
    return snap, selection


@task(name="train", **COMPUTE)
def train_task(
    base_model: str,
    snapshot,
    run_config,
    out_dir: Path,
    parent_version: str | None,
    init_adapter: str | None,
    turn: TurnRecord,
    progress: bool,
) -> Path:
    from retrain.train import train_adapter

    return train_adapter(
        base_model,
        snapshot,
        run_config,
        out_dir,
        parent_version=parent_version,
        progress=progress,
        init_adapter=Path(init_adapter) if init_adapter else None,
        turn=turn,
    )


@task(name="suspected-triggers", **IO)
def suspected_triggers_task(store_url: str | None) -> list[str]:
    """The phrases curation judged triggers or suspects, for the safety probes to append to their prompts."""
    from curation import query

    with _session(store_url) as session:
        return [s.phrase for s in query.load_suspected_triggers(session)]


@task(name="evaluate", **COMPUTE)
def evaluate_task(
    base_model: str,
    candidate_dir: Path,
    snapshot,
    active_dir: str | None,
    run_config,
    suspected: list[str],
    progress: bool,
) -> EvaluationReport:
    from retrain.evaluate import evaluate

    return evaluate(
        base_model,
        candidate_dir,
        snapshot,
        active_dir=active_dir,
        config=run_config,
        report_dir=candidate_dir.parent / f"{candidate_dir.name}-report",
        progress=progress,
        suspected_triggers=suspected,
    )


@task(name="gate", **COMPUTE)
def gate_task(report: EvaluationReport, gates_path: str | None) -> GateResult:
    from retrain.gates import decide_gate, load_gate_policy

    return decide_gate(report, load_gate_policy(gates_path))


@task(name="register-candidate", **IO)
def register_task(
    store_url: str | None, artifact_dir: Path, actor: str, reason: str, artifact_root: str | None = None
) -> str:
    from deploy import registry

    with _session(store_url) as session:
        return registry.register_adapter(
            session, artifact_dir, actor=actor, reason=reason, storage=_storage(artifact_root)
        ).version


@task(name="record-gate-failure", **IO)
def record_gate_failure_task(store_url: str | None, version: str, actor: str, failures: list[str]) -> None:
    from deploy import registry

    with _session(store_url) as session:
        registry.reject_candidate(session, version, actor=actor, reason="gate failed: " + "; ".join(failures))


@task(name="start-canary", **IO)
def canary_task(
    store_url: str | None,
    redis_url: str | None,
    version: str,
    share: float,
    actor: str,
    reason: str,
    artifact_root: str | None = None,
) -> dict:
    from deploy import registry
    from deploy.control import publish_routing_change

    with _session(store_url) as session:
        routing = registry.start_canary(
            session, version, share, actor=actor, reason=reason, storage=_storage(artifact_root)
        )
    publish_routing_change(_redis_url(redis_url), routing.base_model, generation=routing.generation)
    return routing.model_dump(mode="json")


@task(name="routing", **IO)
def routing_task(store_url: str | None, base_model: str) -> dict:
    from deploy import registry

    with _session(store_url) as session:
        return registry.get_routing(session, base_model).model_dump(mode="json")


@task(name="feedback-stats", **IO)
def feedback_stats_task(store_url: str | None, base_model: str, versions: list[str | None]) -> dict:
    """Verified feedback per serving version on answers served since the running canary started: both arms
    over the same period, in one transaction. {"since": ISO time or None (no canary), "stats": {version: counts}}."""
    from curation import query
    from deploy import registry

    with _session(store_url) as session:
        since = registry.canary_started_at(session, base_model)
        if since is None:
            return {"since": None, "stats": {}}
        stats = query.load_verified_feedback_stats(
            session, base_model=base_model, adapter_versions=versions, since=since
        )
    return {"since": since.isoformat(), "stats": {("__base__" if k is None else k): v for k, v in stats.items()}}


@task(name="move-routing", **IO)
def move_task(
    store_url: str | None,
    redis_url: str | None,
    verdict: str,
    version: str,
    actor: str,
    reason: str,
    artifact_root: str | None = None,
) -> dict:
    from deploy import registry
    from deploy.control import publish_routing_change

    storage = _storage(artifact_root)
    with _session(store_url) as session:
        if verdict == CanaryVerdict.PROMOTE:
            routing = registry.promote(session, version, actor=actor, reason=reason, storage=storage)
        else:
            routing = registry.rollback(
                session,
                actor=actor,
                reason=reason,
                storage=storage,
                base_model=registry.get_version(session, version).base_model,
            )
    publish_routing_change(_redis_url(redis_url), routing.base_model, generation=routing.generation)
    return routing.model_dump(mode="json")


# ------------------------------------------------------------------------------------------- flows
def _run_config(train_config: str | None):
    from retrain.config import load_run_config

    return load_run_config(train_config)


def _runs_dir(base_model: str) -> Path:
    from alignloop.core.settings import get_settings

    return get_settings().home / "retrain" / base_key(base_model)


@flow(name="retrain")
def retrain_flow(
    base_model: str | None = None,
    train_config: str | None = None,
    gates: str | None = None,
    canary_share: float = 0.2,
    store_url: str | None = None,
    redis_url: str | None = None,
    actor: str = "alignloop-flows",
    progress: bool = False,
    artifact_root: str | None = None,
) -> Any:
    """One turn of the loop: snapshot, train, evaluate and gate against what serves now; canary if it passes.

    Runs from any registry state: the base or an adapter active, after a rejected or rolled-back turn. With a
    canary live it skips (never two canaries); with no new curated data since the previous turn it skips.
    One retrain at a time per base model (a Prefect global concurrency limit). A failed step raises and
    leaves the registry and serving as they were; a failed gate registers the candidate as rejected,
    with the reasons in the audit log and the run's final message. `store_url`, `redis_url` and
    `artifact_root` (the registry's adapter copies) default to the configured ones.
    """
    from retrain.errors import NotEnoughDataError

    logger = get_run_logger()
    base = resolve_base_task(base_model)
    with _one_at_a_time(f"retrain-{base_key(base)}"):
        run_config = _run_config(train_config)
        plan, active_dir = plan_turn_task(store_url, base, artifact_root)
        if plan.blocked_reason:
            return _skipped(logger, plan.blocked_reason, plan)
        out_dir = _runs_dir(base)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            snap, selection = snapshot_task(store_url, run_config, plan, out_dir)
        except NotEnoughDataError as exc:
            return _skipped(logger, f"not enough curated data for a turn: {exc}", plan)
        if snap is None:
            since = plan.since.isoformat() if plan.since else "the start"
            return _skipped(logger, f"no curated data since the previous turn ({since})", plan)
        turn = TurnRecord(
            parent_version=plan.parent,
            previous_turn=plan.previous_turn,
            init=run_config.turns.init if plan.parent else "fresh",
            since=selection.since,
            until=selection.until,
            new_pairs=selection.new_pairs,
            new_unpaired=selection.new_unpaired,
            replay_pairs=selection.replay_pairs,
            replay_unpaired=selection.replay_unpaired,
        )
        logger.info(
            "turn on %s: %s; snapshot %s: %s",
            plan.parent or "the base",
            turn.model_dump_json(),
            snap.hash[:12],
            json.dumps(snap.stats, default=str)[:400],
        )
        init = active_dir if plan.parent and run_config.turns.init == "continue" else None
        artifact = train_task(base, snap, run_config, out_dir, plan.parent, init, turn, progress)
        over = plan.parent or "the base"
        # registered as a candidate before it is evaluated: replicas stage (verify and load) it meanwhile, so
        # the canary below only flips; one stopped at the gate is marked rejected and its slot given back
        version = register_task(
            store_url,
            artifact,
            actor,
            f"trained on snapshot {snap.hash[:12]} "
            f"({selection.new_pairs} new pairs, {selection.replay_pairs} replayed) over {over}",
            artifact_root,
        )
        try:
            report = evaluate_task(
                base, artifact, snap, active_dir, run_config, suspected_triggers_task(store_url), progress
            )
            decision = gate_task(report, gates)
        except Exception as exc:  # no candidate is left waiting for a verdict that will not come
            record_gate_failure_task(store_url, version, actor, [f"evaluation failed: {type(exc).__name__}: {exc}"])
            raise
        result = {
            "version": version,
            "snapshot": snap.hash,
            "snapshot_stats": snap.stats,
            "report": report.model_dump(mode="json"),
            "gate": decision.model_dump(),
            "artifact": str(artifact),
            "parent": plan.parent,
            "turn": turn.model_dump(mode="json"),
        }
        if not decision.passed:
            record_gate_failure_task(store_url, version, actor, decision.failures)
            msg = f"{version} stopped at the gate: " + "; ".join(decision.failures)
            logger.warning(msg)
            return Completed(message=msg, data={**result, "status": "gate_failed"})
        routing = canary_task(
            store_url,
            redis_url,
            version,
            canary_share,
            actor,
            f"gates passed ({len(decision.checked)} checks) against {over}",
            artifact_root,
        )
        msg = f"{version} passed the gate and serves {canary_share:.0%} of users as a canary against {over}"
        logger.info(msg)
        return Completed(message=msg, data={**result, "status": "canary", "routing": routing})


def _skipped(logger, why: str, plan: TurnPlan):
    logger.info("retrain skipped: %s", why)
    return Completed(
        message=f"skipped: {why}", data={"status": "skipped", "reason": why, "parent": plan.parent, "version": None}
    )


class _one_at_a_time:
    """A Prefect global concurrency limit of 1 under `name`, created when missing (no-op limits don't exist)."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
        from prefect.concurrency.sync import concurrency
        from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

        with get_client(sync_client=True) as client:
            try:
                client.read_global_concurrency_limit_by_name(self.name)
            except ObjectNotFound:
                with suppress(ObjectAlreadyExists):
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=self.name, limit=1))
        self._cm = concurrency(self.name, occupy=1, strict=True)
        return self._cm.__enter__()

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def load_canary_policy(path: str | Path | None = None) -> CanaryPolicy:
    from flows.settings import get_settings

    path = Path(path or get_settings().canary_policy)
    try:
        return CanaryPolicy.model_validate(yaml.safe_load(path.read_text()) or {})
    except (OSError, ValueError) as exc:
        raise FlowsError(f"canary policy {str(path)!r} is not valid: {exc}") from exc


@flow(name="canary-watch", log_prints=True)
def canary_watch_flow(
    base_model: str | None = None,
    policy: str | None = None,
    store_url: str | None = None,
    redis_url: str | None = None,
    actor: str = "alignloop-canary-watch",
    artifact_root: str | None = None,
) -> dict:
    """Compare the canary's live feedback with the active arm's (the active adapter, or the base model) over the
    same period, since the canary started; promote it or roll it back when clear.

    Only feedback whose token serving signed counts, by the version the token names: a client's
    `adapter_version` alone never moves a canary."""
    logger = get_run_logger()
    base = resolve_base_task(base_model)
    routing = routing_task(store_url, base)
    if not routing.get("canary"):
        return {"verdict": "no-canary", "routing": routing}
    canary, active = routing["canary"], routing.get("active")
    period = feedback_stats_task(store_url, base, [canary, active])
    stats = period["stats"]
    c_stats, a_stats = stats.get(canary, {}), stats.get(active or "__base__", {})
    decision = decide_canary(
        ArmStats.from_feedback(c_stats), ArmStats.from_feedback(a_stats), load_canary_policy(policy)
    )
    out = {
        "verdict": decision.verdict.value,
        "canary": canary,
        "active": active,
        "reason": decision.reason,
        "p_worse": decision.p_worse,
        "canary_events": decision.canary_events,
        "stats": stats,
        "since": period["since"],
    }
    logger.info("canary %s: %s (%s)", canary, decision.verdict.value, decision.reason)
    if decision.verdict is not CanaryVerdict.CONTINUE:
        out["routing"] = move_task(
            store_url,
            redis_url,
            decision.verdict.value,
            canary,
            actor,
            f"canary-watch: {decision.reason}",
            artifact_root,
        )
    return out


@task(name="read-kafka-range", **IO)
def read_kafka_range_task(
    bootstrap: str,
    topic: str,
    start: dict[int, int] | None,
    end: dict[int, int] | None,
    start_time: datetime | None,
    end_time: datetime | None,
) -> list[bytes]:
    from flows.kafka_range import read_range

    return read_range(bootstrap, topic, start_offsets=start, end_offsets=end, start_time=start_time, end_time=end_time)


@task(name="re-curate", **COMPUTE)
def recurate_task(lines: list[bytes], out_dir: Path) -> dict:
    from curation.replay import reason_counts, run_replay, save_jsonl
    from curation.settings import get_settings

    result = run_replay(lines, get_settings().policy)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (
        ("decisions", result.decisions),
        ("pairs", result.pairs),
        ("unpaired", result.unpaired),
        ("dlq", result.dlq),
    ):
        save_jsonl(out_dir / f"{name}.jsonl", rows)
    return {
        "events": len(lines),
        "decisions": len(result.decisions),
        "pairs": len(result.pairs),
        "unpaired": len(result.unpaired),
        "dlq": len(result.dlq),
        "reasons": reason_counts(result.decisions),
        "out_dir": str(out_dir),
    }


@flow(name="replay", log_prints=True)
def replay_flow(
    out_dir: str,
    topic: str | None = None,
    start_offsets: dict[int, int] | None = None,
    end_offsets: dict[int, int] | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    bootstrap: str | None = None,
) -> dict:
    """Re-curate a Kafka offset or time range through curation's replay path (after filters change)."""
    from alignloop.core.settings import get_settings
    from curation.settings import get_settings as curation_settings

    lines = read_kafka_range_task(
        bootstrap or get_settings().kafka_bootstrap,
        topic or curation_settings().topic,
        start_offsets,
        end_offsets,
        start_time,
        end_time,
    )
    return recurate_task(lines, Path(out_dir))


@task(name="count-pairs", **IO)
def count_pairs_task(store_url: str | None) -> int:
    from curation import query

    with _session(store_url) as session:
        return query.count_pairs(session)


@flow(name="data-trigger", log_prints=True)
def data_trigger_flow(
    base_model: str | None = None,
    min_new_pairs: int = 200,
    store_url: str | None = None,
    deployment: str = "retrain/retrain",
) -> dict:
    """Start the retrain deployment when at least `min_new_pairs` curated pairs arrived since the last snapshot."""
    from prefect.deployments import run_deployment

    base = resolve_base_task(base_model)
    mark = _runs_dir(base) / "last_snapshot.json"
    seen = json.loads(mark.read_text())["pairs_total"] if mark.exists() else 0
    total = count_pairs_task(store_url)
    out = {
        "pairs_total": total,
        "pairs_at_last_snapshot": seen,
        "new_pairs": total - seen,
        "threshold": min_new_pairs,
        "triggered": total - seen >= min_new_pairs,
    }
    if out["triggered"]:
        # a retrain already due or running will snapshot these pairs: starting another one would only be
        # cancelled by the deployment's concurrency limit (the check and the limit together make one retrain)
        running = retrain_in_flight_task(deployment)
        if running:
            out |= {"retrain_run": running, "already_running": True}
        else:
            # sync here (no running event loop); Prefect types it as FlowRun | Coroutine for both uses
            run = run_deployment(deployment, parameters={"base_model": base}, timeout=0)
            out |= {"retrain_run": str(run.id), "already_running": False}  # type: ignore[union-attr]
    return out


_IN_FLIGHT = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")


def pick_in_flight(runs: list, now: datetime, *, due_within_s: float = 60.0) -> str | None:
    """The id of a run that is running, starting or due now; runs scheduled later (the cron's next ones) don't count."""
    for run in runs:
        state = run.state.type.value if run.state else None
        if state not in _IN_FLIGHT:
            continue
        start = run.expected_start_time or run.next_scheduled_start_time
        if state == "SCHEDULED" and start is not None and (start - now).total_seconds() > due_within_s:
            continue
        return str(run.id)
    return None


@task(name="retrain-in-flight", **IO)
def retrain_in_flight_task(deployment: str) -> str | None:
    from datetime import UTC

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            return None
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in _IN_FLIGHT]))
            ),
        )
    return pick_in_flight(runs, datetime.now(UTC))
