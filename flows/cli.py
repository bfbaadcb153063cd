"""The `alignloop flows` command group and `alignloop demo`; heavy imports stay inside the commands."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import typer

app = typer.Typer(help="Prefect flows that compose the loop: retrain, canary-watch, replay, data trigger; "
                       "`serve` schedules them.", no_args_is_help=True)
run_app = typer.Typer(help="Run one flow now (against PREFECT_API_URL, or a temporary local Prefect server).",
                      no_args_is_help=True)
app.add_typer(run_app, name="run")


def _echo(result, as_json: bool) -> None:
    typer.echo(json.dumps(result, indent=None if as_json else 2, default=str))


@run_app.command("retrain")
def run_retrain(
    base_model: str = typer.Option(None, help="HF model dir or id; default: the embedded tiny model"),
    config: Path = typer.Option(None, exists=True, dir_okay=False, help="run config YAML (retrain/configs)"),
    gates: Path = typer.Option(None, exists=True, dir_okay=False, help="gate policy YAML"),
    canary_share: float = typer.Option(0.2, min=0.01, max=1.0, help="share of users the canary serves"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One turn of the loop over what serves now: snapshot -> train -> evaluate -> gate -> register -> canary.

    Exit 0 when the candidate became the canary, 1 when the gate stopped it, 0 with status "skipped" when there
    was nothing to do (a canary is live, or no new curated data since the previous turn).
    """
    from flows.loop import retrain_flow

    result = retrain_flow(base_model=base_model, train_config=str(config) if config else None,
                          gates=str(gates) if gates else None, canary_share=canary_share, progress=True)
    extra = {"report_dir": result["artifact"] + "-report"} if result.get("artifact") else {}
    _echo({k: v for k, v in result.items() if k != "report"} | extra, as_json)
    if result["status"] == "gate_failed":
        raise typer.Exit(1)


@run_app.command("canary-watch")
def run_canary_watch(base_model: str = typer.Option(None), policy: Path = typer.Option(None, exists=True),
                     as_json: bool = typer.Option(False, "--json")) -> None:
    """One look at the canary: promote, roll back, or keep watching."""
    from flows.loop import canary_watch_flow

    _echo(canary_watch_flow(base_model=base_model, policy=str(policy) if policy else None), as_json)


@run_app.command("replay")
def run_replay(out_dir: Path = typer.Option(..., "--out", help="directory for decisions/pairs/unpaired/dlq .jsonl"),
               topic: str = typer.Option(None, help="default: curation's feedback topic"),
               since: datetime = typer.Option(None, help="broker time to start from (ISO)"),
               until: datetime = typer.Option(None, help="broker time to stop at (ISO)"),
               as_json: bool = typer.Option(False, "--json")) -> None:
    """Re-curate a Kafka time range with the current filters, through curation's replay path."""
    from flows.loop import replay_flow

    _echo(replay_flow(out_dir=str(out_dir), topic=topic, start_time=since, end_time=until), as_json)


@app.command("serve")
def serve(
    retrain_cron: str = typer.Option(None, help="cron of the retrain deployment (default from settings)"),
    min_new_pairs: int = typer.Option(None, help="data trigger: new curated pairs that start a retrain"),
    work_pool: str = typer.Option(None, help="Prefect work pool for training (e.g. GPU workers elsewhere)"),
) -> None:
    """Start (or use) a Prefect server and serve the loop's deployments with their schedules until Ctrl-C."""
    from prefect import serve as prefect_serve

    from alignloop.settings import get_settings as core
    from flows.schedule import build_deployments, deploy_retrain_to_pool, ensure_prefect_server
    from flows.settings import get_settings

    settings = get_settings().model_copy(update={k: v for k, v in {
        "retrain_cron": retrain_cron, "min_new_pairs": min_new_pairs, "work_pool": work_pool}.items() if v is not None})
    api = ensure_prefect_server(settings.prefect_port, core().home / "prefect")
    typer.echo(f"Prefect API: {api}")
    deployments = build_deployments(settings)
    if settings.work_pool:
        typer.echo(f"retrain deployment on work pool {settings.work_pool}: "
                   f"{deploy_retrain_to_pool(settings, settings.work_pool)}")
        deployments = [d for d in deployments if d.name != "retrain"]
    prefect_serve(*deployments)


def demo(
    users: int = typer.Option(24, help="honest simulated users"),
    events: int = typer.Option(1600, help="feedback events before the first retrain"),
    turns: int = typer.Option(2, min=1, help="turns of the loop; from turn 2 on the users also want the brief "
                              "sign-off, and each turn trains over the adapter the previous one promoted"),
    turn_events: int = typer.Option(None, help="feedback events before each later turn (default: events / 2)"),
    seed: int = typer.Option(0),
    report: Path = typer.Option(None, help="HTML report path; default <home>/demo/<run>/report.html"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object (its `turns` is a "
                                 "list: version, parent_version, gate, outcome per turn)"),
) -> None:
    """The whole loop on the embedded defaults, turn after turn: serving, simulated users (honest, a spam bot,
    poisoners), curation, retrain over what serves now with gates, canary, promotion on live feedback, and a
    rollback to the previous version. Exit 1 if a turn the users should like was not promoted."""
    from flows.demo import run_demo
    from flows.errors import FlowsError

    try:
        run_demo(users=users, events=events, turns=turns, turn_events=turn_events, seed=seed, report=report,
                 as_json=as_json)
    except FlowsError as exc:
        typer.echo(f"alignloop demo: {exc}", err=True)
        raise typer.Exit(1) from None
