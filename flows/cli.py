"""The `alignloop flows` command group; heavy imports stay inside the commands."""

from __future__ import annotations

import json
import signal
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import typer

app = typer.Typer(
    help="Prefect flows that compose the loop: retrain, canary-watch, replay, data trigger; `serve` schedules them.",
    no_args_is_help=True,
)
run_app = typer.Typer(
    help="Run one flow now (against PREFECT_API_URL, or a temporary local Prefect server).", no_args_is_help=True
)
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

    # the flow returns a Completed state, so the caller gets its data; Prefect's types cannot say that
    result = cast(
        dict[str, Any],
        retrain_flow(
            base_model=base_model,
            train_config=str(config) if config else None,
            gates=str(gates) if gates else None,
            canary_share=canary_share,
            progress=True,
        ),
    )
    extra = {"report_dir": result["artifact"] + "-report"} if result.get("artifact") else {}
    _echo({k: v for k, v in result.items() if k != "report"} | extra, as_json)
    if result["status"] == "gate_failed":
        raise typer.Exit(1)


@run_app.command("canary-watch")
def run_canary_watch(
    base_model: str = typer.Option(None),
    policy: Path = typer.Option(None, exists=True),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One look at the canary: promote, roll back, or keep watching."""
    from flows.loop import canary_watch_flow

    _echo(canary_watch_flow(base_model=base_model, policy=str(policy) if policy else None), as_json)


@run_app.command("replay")
def run_replay(
    out_dir: Path = typer.Option(..., "--out", help="directory for decisions/pairs/unpaired/dlq .jsonl"),
    topic: str = typer.Option(None, help="default: curation's feedback topic"),
    since: datetime = typer.Option(None, help="broker time to start from (ISO)"),
    until: datetime = typer.Option(None, help="broker time to stop at (ISO)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Re-curate a Kafka time range with the current filters, through curation's replay path."""
    from flows.loop import replay_flow

    _echo(replay_flow(out_dir=str(out_dir), topic=topic, start_time=since, end_time=until), as_json)


@app.command("serve")
def serve(
    api_url: str = typer.Option(
        None,
        help="serve against this Prefect API (e.g. http://host:4200/api) instead of "
        "starting a server; default: settings, then Prefect's PREFECT_API_URL",
    ),
    port: int = typer.Option(None, help="port of the Prefect server started here (default 4200)"),
    base_model: str = typer.Option(None, help="HF model dir or id; default: the embedded tiny model"),
    config: Path = typer.Option(None, exists=True, dir_okay=False, help="run config YAML of scheduled retrains"),
    gates: Path = typer.Option(None, exists=True, dir_okay=False, help="gate policy YAML of scheduled retrains"),
    retrain_cron: str = typer.Option(None, help="cron of the retrain deployment (default from settings)"),
    min_new_pairs: int = typer.Option(None, min=1, help="data trigger: new curated pairs that start a retrain"),
    data_check_interval: float = typer.Option(None, min=1, help="seconds between data-trigger runs"),
    canary_watch_interval: float = typer.Option(None, min=1, help="seconds between canary-watch runs"),
    poll: float = typer.Option(None, min=0.1, help="seconds between asking the server for runs that are due"),
    work_pool: str = typer.Option(
        None,
        help="register retrain on this Prefect work pool (its workers run it, e.g. on GPUs) instead of running it here",
    ),
) -> None:
    """Serve the loop's deployments on a Prefect server (started here unless one is given) until Ctrl-C:
    retrain on cron, the data trigger and canary-watch on intervals, replay on demand."""
    from alignloop.core.settings import get_settings as core
    from flows.schedule import (
        build_deployments,
        deploy_retrain_to_pool,
        describe_api,
        open_prefect_server,
        prefect_api,
        serve_deployments,
    )
    from flows.settings import get_settings

    settings = get_settings().model_copy(
        update={
            k: v
            for k, v in {
                "prefect_api_url": api_url,
                "prefect_port": port,
                "base_model": base_model,
                "train_config": config,
                "gates": gates,
                "retrain_cron": retrain_cron,
                "min_new_pairs": min_new_pairs,
                "data_check_interval_s": data_check_interval,
                "canary_watch_interval_s": canary_watch_interval,
                "poll_s": poll,
                "work_pool": work_pool,
            }.items()
            if v is not None
        }
    )
    # until the runner takes the signals over, SIGTERM or Ctrl-C only ask start-up to stop at its next step
    # (then the `finally` below stops the server started here): killed on the spot, this process would orphan
    # that server, and an exception raised from a handler lands inside whatever library code is running
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    server = open_prefect_server(settings, core().home / "prefect", stopping=stopping)
    try:
        where = f"started here, log {server.log}" if server.started_here else "given"
        typer.echo(f"Prefect API: {server.api_url} ({where})")
        with prefect_api(server.api_url):
            deployments = build_deployments(settings)
            if settings.work_pool:
                deployment_id = deploy_retrain_to_pool(
                    settings, settings.work_pool, store_url=core().resolved_store_url, redis_url=core().redis_url
                )
                typer.echo(
                    f"retrain: on work pool {settings.work_pool} (deployment {deployment_id}), "
                    f"cron {settings.retrain_cron!r}"
                )
                deployments = [d for d in deployments if d.name != "retrain"]
            else:
                typer.echo(f"retrain: here, cron {settings.retrain_cron!r}")
            serve_deployments(
                deployments,
                poll_s=settings.poll_s,
                stopping=stopping,
                on_ready=lambda: typer.echo(
                    f"data-trigger: every {settings.data_check_interval_s:g} s, >= {settings.min_new_pairs} new pairs; "
                    f"canary-watch: every {settings.canary_watch_interval_s:g} s; replay: on demand. "
                    f"Serving on {describe_api(server.api_url)}; Ctrl-C stops."
                ),
            )
    finally:
        if server.started_here:
            server.stop()
            typer.echo("Prefect server stopped")
