"""The `alignloop retrain` command group; heavy imports stay inside the commands."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import typer

app = typer.Typer(help=__import__("retrain").__doc__, no_args_is_help=True)

_CONFIG = typer.Option(None, "--config", "-c", help="run config YAML (default: retrain/configs/dpo-tiny.yaml)")
_BASE = typer.Option(None, "--base-model", help="HF model dir or hub id (default: the embedded tiny model)")
_JSON = typer.Option(False, "--json", help="print machine-readable output")


def _echo(obj, as_json: bool, human: str) -> None:
    typer.echo(json.dumps(obj, indent=None if as_json else 2, default=str) if as_json else human)


@app.command("init-model")
def init_model(
    seed: int = typer.Option(0, help="seed: the same seed builds the same model"), as_json: bool = _JSON
) -> None:
    """Build (once, then cached) the embedded tiny Llama model and its BPE tokenizer; print its directory."""
    from retrain.model import ensure_base_model

    path = ensure_base_model(seed=seed, progress=not as_json)
    info = json.loads((path / "alignloop_model.json").read_text())
    _echo({"path": str(path), **info}, as_json, f"{path}  ({info['params']:,} parameters, recipe {info['recipe']})")


@app.command("snapshot")
def snapshot_cmd(
    out: Path = typer.Argument(..., help="directory to create with the snapshot's JSON-lines files"),
    pairs: Path = typer.Option(None, "--pairs", help="pairs JSON lines (curation's export); default: the store"),
    unpaired: Path = typer.Option(None, "--unpaired", help="unpaired JSON lines (curation's export)"),
    since: datetime = typer.Option(None, help="only records created at or after this time"),
    until: datetime = typer.Option(None, help="only records created before this time"),
    config: Path = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """Build a deterministic, content-hashed dataset snapshot (split, capped, deduped) from files or the store."""
    from retrain.config import load_run_config
    from retrain.snapshot import build_snapshot, load_records_jsonl, save_snapshot

    cfg = load_run_config(config)
    if pairs or unpaired:
        p, u = load_records_jsonl(pairs), load_records_jsonl(unpaired)
    else:
        p, u = _from_store(since, until)
    policy = cfg.snapshot.model_copy(update={k: v for k, v in {"since": since, "until": until}.items() if v})
    snap = build_snapshot(p, u, policy)
    save_snapshot(snap, out)
    _echo(
        {"path": str(out), "hash": snap.hash, **snap.stats},
        as_json,
        f"snapshot {snap.hash[:12]} -> {out}: {snap.stats['sizes']}",
    )


def _from_store(since, until):
    from alignloop.core.db import make_engine, session_scope
    from alignloop.core.settings import get_settings
    from retrain.snapshot import load_snapshot_inputs

    engine = make_engine(get_settings().resolved_store_url)
    try:
        with session_scope(engine) as session:
            return load_snapshot_inputs(session, since=since, until=until)
    finally:
        engine.dispose()


@app.command("train")
def train_cmd(
    snapshot: Path = typer.Argument(..., help="a snapshot directory written by `alignloop retrain snapshot`"),
    out_dir: Path = typer.Option(None, "--out", help="where the adapter directory goes (default: <home>/adapters)"),
    parent_version: str = typer.Option(None, "--parent", help="the adapter version this one would replace"),
    base_model: str = _BASE,
    config: Path = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """Train a LoRA adapter (DPO on pairs, KTO on unpaired) and write it with its manifest, atomically."""
    from retrain.config import load_run_config
    from retrain.settings import get_settings
    from retrain.snapshot import load_snapshot
    from retrain.train import load_verified_manifest, train_adapter

    cfg = load_run_config(config)
    snap = load_snapshot(snapshot)
    out = out_dir or get_settings().resolved_artifacts_dir()
    path = train_adapter(base_model, snap, cfg, out, parent_version=parent_version, progress=not as_json)
    manifest = load_verified_manifest(path)
    _echo(
        {"path": str(path), "version": manifest.version, "metrics": manifest.metrics},
        as_json,
        f"adapter {manifest.version} -> {path}",
    )


@app.command("evaluate")
def evaluate_cmd(
    candidate: Path = typer.Argument(..., help="the candidate adapter directory"),
    snapshot: Path = typer.Option(..., "--snapshot", help="the snapshot it was trained on (held-out slices)"),
    active: Path = typer.Option(None, "--active", help="the adapter serving now, to compare against"),
    report_dir: Path = typer.Option(None, "--report-dir", help="default: <candidate>/../reports/<version>"),
    base_model: str = _BASE,
    config: Path = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """Evaluate a candidate against the active adapter and the base; write report.json and report.html."""
    from retrain.config import load_run_config
    from retrain.evaluate import evaluate
    from retrain.snapshot import load_snapshot

    cfg = load_run_config(config)
    report = evaluate(
        base_model,
        candidate,
        load_snapshot(snapshot),
        active_dir=active,
        config=cfg,
        report_dir=report_dir,
        progress=not as_json,
    )
    comp = report.comparisons.model_dump()
    html = report.report_files.html if report.report_files else "(not written)"
    _echo(
        report.model_dump(mode="json") if as_json else None,
        as_json,
        "\n".join(f"{k}: {v}" for k, v in comp.items()) + f"\nreport: {html}",
    )


@app.command("gate")
def gate_cmd(
    report: Path = typer.Argument(..., help="report.json (or its directory) from `alignloop retrain evaluate`"),
    policy: Path = typer.Option(None, "--policy", help="gate policy YAML (default: retrain/configs/gates.yaml)"),
    as_json: bool = _JSON,
) -> None:
    """Apply the gate policy to an evaluation report; exit 0 when it passes, 1 with the reasons when not."""
    from retrain.evaluate import load_report
    from retrain.gates import decide_gate, load_gate_policy

    decision = decide_gate(load_report(report), load_gate_policy(policy))
    _echo(
        decision.model_dump(),
        as_json,
        "PASSED" if decision.passed else "FAILED\n" + "\n".join(f"- {f}" for f in decision.failures),
    )
    raise typer.Exit(0 if decision.passed else 1)
