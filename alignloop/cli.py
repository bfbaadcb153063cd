"""The `alignloop` command: one group per package, imported lazily so `--help` never loads torch."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.table import Table

from alignloop.errors import AlignloopError

app = typer.Typer(
    help="alignloop: feedback in, curated preference data, LoRA DPO/KTO adapters, gated hot-swap out.",
    no_args_is_help=True, pretty_exceptions_enable=False)
stack_app = typer.Typer(help="Start, stop and check the local stack: Kafka (KRaft), Redis, PostgreSQL.",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")
err = Console(stderr=True, soft_wrap=True)


def _add_package_groups() -> None:
    # each package's cli module is light: heavy imports live inside its commands
    from curation.cli import app as curation_app
    from deploy.cli import app as deploy_app
    from flows.cli import app as flows_app
    from flows.cli import demo
    from ingest.cli import app as ingest_app
    from retrain.cli import app as retrain_app

    app.add_typer(ingest_app, name="ingest")
    app.add_typer(curation_app, name="curation")
    app.add_typer(retrain_app, name="retrain")
    app.add_typer(deploy_app, name="deploy")
    app.add_typer(flows_app, name="flows")
    app.command("demo", help=demo.__doc__)(demo)


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
    from alignloop import stack
    from alignloop.settings import get_settings

    with err.status("starting the stack") as spinner:
        rows = stack.up(get_settings(), on_progress=lambda n, m: spinner.update(f"{n}: {m}"))
    _print_status(rows, as_json)
    if not all(r.healthy for r in rows):
        raise AlignloopError("stack up finished but a service is not healthy: " +
                             ", ".join(r.name for r in rows if not r.healthy))


@stack_app.command("down")
def stack_down() -> None:
    """Stop the services that `stack up` started (by their recorded pids); others are left alone."""
    from alignloop import stack
    from alignloop.settings import get_settings

    for name, stopped in stack.down(get_settings()).items():
        typer.echo(f"{name}: {'stopped' if stopped else 'not ours or not running'}")


@stack_app.command("status")
def stack_status(as_json: bool = typer.Option(False, "--json", help="print machine-readable status")) -> None:
    """Health of each service: broker metadata, Redis PING, PostgreSQL SELECT 1. Exit 1 if any is down."""
    from alignloop import stack
    from alignloop.settings import get_settings

    rows = [*stack.status(get_settings()), _engine_status()]
    _print_status(rows, as_json)
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


def _engine_status():
    """The serving engine as one more row: the embedded default, or vLLM (its environment, attached servers)."""
    from alignloop.stack import ServiceStatus
    from deploy.settings import get_settings as deploy_settings
    from deploy.vllm_env import describe_engine

    healthy, detail = describe_engine(deploy_settings())
    return ServiceStatus("engine", healthy, None, False, detail)


def main() -> None:
    _add_package_groups()
    try:
        app()
    except AlignloopError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(2)
