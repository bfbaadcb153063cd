"""The composition root, the `alignloop` command: one group per package and the demo; `--help` never loads torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from alignloop.core.errors import AlignloopError

app = typer.Typer(
    help="alignloop: feedback in, curated preference data, LoRA DPO/KTO adapters, gated hot-swap out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(
    help="Start, stop and check the local stack: Kafka (KRaft), Redis, PostgreSQL.", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")
err = Console(stderr=True, soft_wrap=True)


def _add_package_groups() -> None:
    # each package's cli module is light: heavy imports live inside its commands
    from curation.cli import app as curation_app
    from deploy.cli import app as deploy_app
    from flows.cli import app as flows_app
    from ingest.cli import app as ingest_app
    from retrain.cli import app as retrain_app

    app.add_typer(ingest_app, name="ingest")
    app.add_typer(curation_app, name="curation")
    app.add_typer(retrain_app, name="retrain")
    app.add_typer(deploy_app, name="deploy")
    app.add_typer(flows_app, name="flows")
    app.command("demo", help=demo.__doc__)(demo)


def demo(
    users: int = typer.Option(24, help="honest simulated users"),
    events: int = typer.Option(1600, help="feedback events before the first retrain"),
    turns: int = typer.Option(
        2,
        min=1,
        help="turns of the loop; from turn 2 on the users also want the brief "
        "sign-off, and each turn trains over the adapter the previous one promoted",
    ),
    turn_events: int = typer.Option(None, help="feedback events before each later turn (default: --events)"),
    seed: int = typer.Option(0),
    report: Path = typer.Option(None, help="HTML report path; default <home>/demo/<run>/report.html"),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="print the summary as one JSON object (its `turns` is a "
        "list: version, parent_version, gate, outcome per turn)",
    ),
) -> None:
    """The whole loop on the embedded defaults, turn after turn: serving, simulated users (honest, a spam bot,
    poisoners), curation, retrain over what serves now with gates, canary, promotion on live feedback, and a
    rollback to the previous version. Exit 1 if a turn the users should like was not promoted."""
    from alignloop.demo import run_demo
    from flows.errors import FlowsError

    try:
        run_demo(
            users=users, events=events, turns=turns, turn_events=turn_events, seed=seed, report=report, as_json=as_json
        )
    except FlowsError as exc:
        typer.echo(f"alignloop demo: {exc}", err=True)
        raise typer.Exit(1) from None


def _print_status(rows, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows]))
        return
    table = Table("service", "healthy", "pid (ours)", "detail")
    for r in rows:
        table.add_row(r.name, "[green]yes[/]" if r.healthy else "[red]no[/]", str(r.pid or "-"), r.detail)
    Console().print(table)


@stack_app.command("up")
def stack_up(as_json: bool = typer.Option(False, "--json", help="print machine-readable status")) -> None:
    """Install what is missing and start Kafka, Redis and PostgreSQL on loopback; safe to repeat."""
    from alignloop.core import stack
    from alignloop.core.settings import get_settings

    with err.status("starting the stack") as spinner:
        rows = stack.up(get_settings(), on_progress=lambda n, m: spinner.update(f"{n}: {m}"))
    _print_status(rows, as_json)
    if not all(r.healthy for r in rows):
        raise AlignloopError(
            "stack up finished but a service is not healthy: " + ", ".join(r.name for r in rows if not r.healthy)
        )


@stack_app.command("down")
def stack_down() -> None:
    """Stop the services that `stack up` started (by their recorded pids); others are left alone."""
    from alignloop.core import stack
    from alignloop.core.settings import get_settings

    for name, stopped in stack.down(get_settings()).items():
        typer.echo(f"{name}: {'stopped' if stopped else 'not ours or not running'}")


@stack_app.command("status")
def stack_status(as_json: bool = typer.Option(False, "--json", help="print machine-readable status")) -> None:
    """Health of each service: broker metadata, Redis PING, PostgreSQL SELECT 1. Exit 1 if any is down."""
    from alignloop.core import stack
    from alignloop.core.settings import get_settings

    rows = [*stack.status(get_settings()), _engine_status()]
    _print_status(rows, as_json)
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


def _engine_status():
    """The serving engine as one more row: the embedded default, or vLLM (its environment, attached servers)."""
    from alignloop.core.stack import ServiceStatus
    from deploy.settings import get_settings as deploy_settings
    from deploy.vllm_env import describe_engine

    healthy, detail = describe_engine(deploy_settings())
    return ServiceStatus("engine", healthy, None, False, detail)


def main() -> None:
    from flows.store import register_stage_migrations

    register_stage_migrations()  # every command may open the shared store, which holds every stage's heads
    _add_package_groups()
    try:
        app()
    except AlignloopError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(2)
