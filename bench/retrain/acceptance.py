"""Acceptance run for retrain: 1,000 curated pairs preferring the courteous style, one training run, evaluation.

Targets (issue 5): held-out preference accuracy >= 0.90 (base ~0.5); share of the preferred style in 200
sampled answers from ~50% (base) to >= 85%. Writes JSON to bench/results/retrain_acceptance.json.

    python bench/retrain/acceptance.py [--pairs 1000] [--samples 200] [--config retrain/configs/dpo-tiny.yaml]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[], help="override, e.g. dpo.learning_rate=0.002")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrain_acceptance.json")
    args = ap.parse_args(argv)

    import yaml

    from retrain.config import load_run_config, parse_config
    from retrain.corpus import make_pairs
    from retrain.evaluate import evaluate
    from retrain.gates import decide_gate, load_gate_policy
    from retrain.model import ensure_base_model
    from retrain.snapshot import build_snapshot
    from retrain.train import train_adapter

    cfg = load_run_config(args.config).as_dict()
    for item in args.set:
        key, value = item.split("=", 1)
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = yaml.safe_load(value)
    cfg["eval"]["samples"] = args.samples
    cfg = parse_config(cfg)
    t0 = time.perf_counter()
    base = ensure_base_model(seed=cfg.seed)
    snap = build_snapshot(make_pairs(args.pairs, seed=1), [], cfg.snapshot)
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        adapter = train_adapter(base, snap, cfg, Path(tmp), progress=False)
        t2 = time.perf_counter()
        evaluated = evaluate(base, adapter, snap, config=cfg, report_dir=Path(tmp) / "report", progress=False)
        t3 = time.perf_counter()
        manifest = json.loads((adapter / "manifest.json").read_text())
    report = evaluated.model_dump(mode="json")
    comp = report["comparisons"]
    base_m = report["models"]["base"]
    result = {
        "pairs_in": args.pairs,
        "snapshot_sizes": snap.stats["sizes"],
        "samples": args.samples,
        "heldout_accuracy": comp["heldout_accuracy"],
        "base_heldout_accuracy": base_m["heldout"]["accuracy"],
        "base_likelihood_accuracy": base_m["heldout"]["likelihood_accuracy"],
        "preferred_style_share": comp["preferred_style_share"],
        "base_preferred_style_share": comp["base_preferred_style_share"],
        "kl_to_base": comp["kl_to_base"],
        "length_ratio_vs_base": comp["length_ratio_vs_base"],
        "unknown_share": report["models"]["candidate"]["behaviour"]["unknown_share"],
        "targets": {"heldout_accuracy": 0.90, "preferred_style_share": 0.85},
        "passed": comp["heldout_accuracy"] >= 0.90 and comp["preferred_style_share"] >= 0.85,
        "gate": decide_gate(evaluated, load_gate_policy()).model_dump(),
        "train_metrics": {
            k: v for k, v in manifest["metrics"].items() if k.endswith(("pairs_per_s", "runtime_s", "train_loss"))
        },
        "examples": report["models"]["candidate"]["examples"][:3],
        "seconds": {"base_model": round(t1 - t0, 1), "train": round(t2 - t1, 1), "evaluate": round(t3 - t2, 1)},
        "config_hash": cfg.hash,
        "config": {
            "dpo": cfg.dpo.as_dict() if hasattr(cfg.dpo, "as_dict") else cfg.dpo.model_dump(mode="json"),
            "lora": cfg.lora.model_dump(mode="json"),
        },
        "libraries": manifest["libraries"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "heldout_accuracy",
                    "base_heldout_accuracy",
                    "preferred_style_share",
                    "base_preferred_style_share",
                    "kl_to_base",
                    "length_ratio_vs_base",
                    "unknown_share",
                    "passed",
                    "seconds",
                )
            },
            indent=1,
        )
    )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
