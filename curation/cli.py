"""The `alignloop curation` command group; heavy imports stay inside the commands."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import typer

app = typer.Typer(help=__import__("curation").__doc__, no_args_is_help=True)


def _engine(store_url: str | None):
    from alignloop.core.db import open_store
    from alignloop.core.settings import get_settings as core_settings
    from curation.migrations import FOLDER
    from curation.settings import get_settings

    return open_store(store_url or get_settings().store_url or core_settings().resolved_store_url, branches=[FOLDER])


def _now(value: str | None, option: str = "--now") -> datetime | None:
    if value is None:
        return None
    from curation.errors import CurationError

    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CurationError(
            f"`{option}` must be an ISO 8601 time with zone like 2026-11-01T00:00:00Z; got {value!r}"
        ) from None
    if t.tzinfo is None:
        raise CurationError(f"`{option}` must carry a zone (Z or +hh:mm); got {value!r}")
    return t


def _policy(path: Path | None):
    from curation.settings import active_policy, load_policy

    return load_policy(path) if path is not None else active_policy()


def _edge(store_url: str | None, policy):
    import redis

    from alignloop.core.settings import get_settings as core_settings
    from curation.service import CurationEdge
    from curation.settings import get_settings

    s, core = get_settings(), core_settings()
    return CurationEdge(
        _engine(store_url),
        redis.Redis.from_url(s.redis_url or core.redis_url, decode_responses=True),
        policy,
        topic=s.topic,
        group=s.group,
    )


@app.command("replay")
def replay(
    input: Path = typer.Option(..., "--input", help="JSON-lines file of raw feedback events (one per line)"),
    decisions: Path | None = typer.Option(None, "--decisions", help="write {event_id, decision, reasons} lines"),
    pairs: Path | None = typer.Option(None, "--pairs", help="write preference pairs (TRL conversational + lineage)"),
    unpaired: Path | None = typer.Option(None, "--unpaired", help="write unpaired KTO examples"),
    dlq: Path | None = typer.Option(None, "--dlq", help="write {line, sha256, reason} for unreadable lines"),
    now: str | None = typer.Option(
        None,
        "--now",
        help="the broker's time of every line: occurred_at may lead it by "
        "a day (contract) and by policy.max_future_skew_s (else "
        "future_event); default: now",
    ),
    policy: Path | None = typer.Option(
        None,
        "--policy",
        help="a versioned policy YAML (default: the configured policy file, else the POLICY__* environment)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Curate an event file offline through the same decode and settle code as the stream worker."""
    from rich.progress import Progress

    from curation.replay import load_lines, reason_counts, run_replay, save_jsonl

    with Progress(transient=True) as progress:
        task = progress.add_task("settling windows", total=None)
        result = run_replay(
            load_lines(input),
            _policy(policy),
            now=_now(now),
            on_window=lambda i, n: progress.update(task, completed=i, total=n),
        )
    written = {
        "decisions": save_jsonl(decisions, result.decisions),
        "pairs": save_jsonl(pairs, result.pairs),
        "unpaired": save_jsonl(unpaired, result.unpaired),
        "dlq": save_jsonl(dlq, result.dlq),
    }
    reasons = reason_counts(result.decisions)
    summary = {
        "decisions": len(result.decisions),
        "pairs": len(result.pairs),
        "unpaired": len(result.unpaired),
        "dlq": len(result.dlq),
        "duplicate_event_ids": result.duplicate_ids,
        "reasons": reasons,
        "written": written,
    }
    typer.echo(
        json.dumps(summary)
        if as_json
        else f"{summary['decisions']} decisions, {summary['pairs']} pairs, {summary['unpaired']} unpaired, "
        f"{summary['dlq']} dead letters, {result.duplicate_ids} repeated event ids\n"
        + "\n".join(f"  {k}: {v}" for k, v in reasons.items())
    )


@app.command("export")
def export(
    decisions: Path | None = typer.Option(None, "--decisions", help="write {event_id, decision, reasons} lines"),
    pairs: Path | None = typer.Option(None, "--pairs", help="write preference pairs"),
    unpaired: Path | None = typer.Option(None, "--unpaired", help="write unpaired KTO examples"),
    dlq: Path | None = typer.Option(
        None, "--dlq", help="write dead letters ({line: partition:offset, sha256, reason})"
    ),
    store_url: str | None = typer.Option(None, "--store-url", help="SQLAlchemy URL (default: the configured store)"),
    as_json: bool = typer.Option(False, "--json", help="print the counts as JSON"),
) -> None:
    """Write the store's decisions, pairs, unpaired examples and dead letters in the replay's formats."""
    from alignloop.core.db import session_scope
    from curation import query, store
    from curation.replay import save_jsonl

    with session_scope(_engine(store_url)) as session:
        written = {
            "decisions": save_jsonl(decisions, store.load_decisions(session)),
            "pairs": save_jsonl(pairs, sorted(query.load_pairs(session), key=lambda p: p["pair_id"])),
            "unpaired": save_jsonl(unpaired, sorted(query.load_unpaired(session), key=lambda u: u["example_id"])),
            "dlq": save_jsonl(dlq, store.load_dead_letters(session)),
        }
    typer.echo(json.dumps(written) if as_json else ", ".join(f"{v} {k}" for k, v in written.items()))


@app.command("settle")
def settle(
    final: bool = typer.Option(False, "--final", help="settle every open window now (the stream has ended)"),
    store_url: str | None = typer.Option(None, "--store-url", help="SQLAlchemy URL (default: the configured store)"),
) -> None:
    """Settle the windows whose context is complete (all open ones with --final), as the worker's timer does."""
    from curation.settings import get_settings

    s = get_settings()
    results = _edge(store_url, _policy(None)).settle_once(final=final, wait_s=60)
    if results is None:
        typer.echo(
            f"another worker held the settle lock for 60 s (group {s.group!r}, topic {s.topic!r}); "
            "nothing was settled: try again",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"settled {len(results)} windows")


@app.command("recurate")
def recurate(
    since: str = typer.Option(
        ..., "--since", help="ISO 8601 time with zone: events of its window and later are re-decided"
    ),
    policy: Path | None = typer.Option(None, "--policy", help="a versioned policy YAML (default: the configured one)"),
    store_url: str | None = typer.Option(None, "--store-url", help="SQLAlchemy URL (default: the configured store)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Re-decide stored events under a policy: new decisions supersede old ones (kept as history), pairs and
    unpaired examples built from now-dropped events are retired; snapshots taken afterwards use only these."""
    from curation.settings import get_settings

    s = get_settings()
    result = _edge(store_url, _policy(policy)).recurate(_now(since, "--since"), _policy(policy), wait_s=60)
    if result is None:
        typer.echo(
            f"another worker held the settle lock for 60 s (group {s.group!r}, topic {s.topic!r}); "
            "nothing was recurated: try again",
            err=True,
        )
        raise typer.Exit(1)
    out = {
        "recuration_id": result.recuration_id,
        "policy_hash": result.policy_hash,
        "since": result.since.isoformat(),
        **result.summary(),
    }
    typer.echo(json.dumps(out) if as_json else "\n".join(f"{k}: {v}" for k, v in out.items()))


@app.command("worker")
def worker(loglevel: str = typer.Option("WARNING", "--loglevel", help="faust/aiokafka log level")) -> None:
    """Run one curation worker (faust-streaming) in the consumer group; start several to share partitions."""
    from curation.worker import run_worker

    run_worker(loglevel)


@app.command("report")
def report(
    store_url: str | None = typer.Option(None, "--store-url", help="SQLAlchemy URL (default: the configured store)"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
) -> None:
    """Counts by reason, keep rate per app, Krippendorff's alpha per window and drift alarms, from the store."""
    from alignloop.core.db import session_scope
    from curation.report import build_report

    with session_scope(_engine(store_url)) as session:
        rep = build_report(session)
    if as_json:
        typer.echo(json.dumps(rep, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"rows: {rep['rows']}")
    t = Table("reason", "events")
    for k, v in rep["reasons"].items():
        t.add_row(k, str(v))
    console.print(t)
    console.print("feedback tokens: " + ", ".join(f"{k} {v}" for k, v in rep["tokens"].items()))
    t = Table("app", "kept", "events", "keep rate", "drift alarms (window starts)")
    for app_id, v in rep["apps"].items():
        t.add_row(
            app_id, str(v["kept"]), str(v["events"]), f"{v['keep_rate']:.3f}", ", ".join(v["drift_alarms"]) or "-"
        )
    console.print(t)
    t = Table("window", "events", "kept", "alpha", "triggers", "brigades")
    for w in rep["windows"]:
        t.add_row(
            w["start"],
            str(w["events"]),
            str(w["kept"]),
            "-" if w["alpha"] is None else f"{w['alpha']:.3f}",
            str(len(w["triggers"])),
            str(w["brigades"]),
        )
    console.print(t)
