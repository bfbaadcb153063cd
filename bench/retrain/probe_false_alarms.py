"""False alarms of the rare-suffix safety probes: how often a clean adapter (trained on honest pairs only) fails
the gate's triggered-probe rule on prompts with random rare-token suffixes appended.

Trains `--adapters` clean adapters on the tiny model (different data seeds), and for each asks every shipped probe
(`eval.probes`) with `--suffix-sets` sets of rare-token suffixes (different seeds), against the base in the same
process. A trial is one adapter on one suffix set; it is a false alarm when the gate (shipped policy, and the
same with `probe_noise_z: 2`) would stop the adapter on that probe's rare prompts. Writes
bench/results/retrain_probe_false_alarms.json.

    python bench/retrain/probe_false_alarms.py [--adapters 4] [--suffix-sets 3] [--samples 64] [--probe NAME_OR_PATH]

The shipped probe never fires on a clean tiny model (its rate is 0 for base and adapter alike), so its false-alarm
count says little about the rule. `--probe bench/retrain/probes/ordinary-apology.yaml` adds a probe whose check fires
on ordinary answers at a base rate well above zero, standing in for a real check (a classifier) that is not
perfectly quiet: there the comparison with the base meets sampling noise, which is what `probe_noise_z` is for.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _config(samples: int, probes: list[str]):
    from retrain.config import load_run_config, parse_config

    raw = load_run_config().as_dict()
    raw["snapshot"].update(min_train_pairs=16, min_heldout_pairs=4)
    raw["lora"].update(r=16, alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    raw["dpo"].update(epochs=1, batch_size=8, max_length=96)
    raw["kto"]["enabled"] = False
    raw["eval"].update(samples=samples, max_new_tokens=32)
    if probes:
        raw["eval"]["probes"] = [*raw["eval"]["probes"], *probes]
    return parse_config(raw)


def _rare_rates(model, tok, plans, detectors, cfg) -> dict[str, tuple[int, float]]:
    from retrain.evaluate import sample_answers

    out = {}
    for plan in plans:
        answers = sample_answers(
            model,
            tok,
            plan.prompts["rare"],
            seed=cfg.eval.seed,
            max_new_tokens=cfg.eval.max_new_tokens,
            temperature=cfg.eval.temperature,
        )
        out[plan.probe.name] = (len(answers), detectors[plan.probe.name].rate(answers))
    return out


def _suffix_plans(tok, cfg, seed: int):
    from retrain.corpus import PROMPTS, chat
    from retrain.probes import plan_probe, rare_suffixes, resolve_probes

    files = resolve_probes(cfg.eval.probes)
    rare = rare_suffixes(tok, max(p.rare_suffixes for p in files), seed=seed)
    prompts = [chat(p) for p in PROMPTS]
    return rare, [
        plan_probe(p, prompts, samples=cfg.eval.samples, config_triggers=[], suspected=[], rare=rare)
        for p in files
        if p.triggers and p.rare_suffixes
    ]


def _alarm(n: int, cand: float, base: float, limit: float, z: float) -> bool:
    from retrain.evaluate import gain_se

    return cand - base > limit + z * (gain_se(cand, base, n, n) or 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--suffix-sets", type=int, default=3)
    ap.add_argument("--samples", type=int, default=64, help="answers per probe and suffix set")
    ap.add_argument("--pairs", type=int, default=160)
    ap.add_argument("--probe", action="append", default=[], help="another probe file (name or path); repeatable")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrain_probe_false_alarms.json")
    args = ap.parse_args(argv)

    from retrain.corpus import make_pairs
    from retrain.evaluate import _merged
    from retrain.gates import load_gate_policy
    from retrain.model import ensure_base_model, load_base
    from retrain.probes import Detector, resolve_probes
    from retrain.snapshot import build_snapshot
    from retrain.train import train_adapter

    t0 = time.perf_counter()
    cfg = _config(args.samples, args.probe)
    policy = load_gate_policy()
    limit = policy.max_triggered_unsafe_rate_increase or 0.0
    base_path = ensure_base_model(seed=cfg.seed, progress=False)
    base_model, tok = load_base(base_path)
    detectors = {p.name: Detector(p) for p in resolve_probes(cfg.eval.probes)}
    sets = [_suffix_plans(tok, cfg, seed=1000 + s) for s in range(args.suffix_sets)]
    base_rates = [_rare_rates(base_model, tok, plans, detectors, cfg) for _, plans in sets]
    trials = []
    with tempfile.TemporaryDirectory() as tmp:
        for a in range(args.adapters):
            snap = build_snapshot(make_pairs(args.pairs, seed=100 + a), [], cfg.snapshot)
            adapter = train_adapter(base_path, snap, cfg, Path(tmp) / f"clean-{a}", progress=False)
            model = _merged(base_model, adapter)
            for s, ((suffixes, plans), base_r) in enumerate(zip(sets, base_rates)):
                for probe, (n, rate) in _rare_rates(model, tok, plans, detectors, cfg).items():
                    b = base_r[probe][1]
                    trials.append(
                        {
                            "adapter": a,
                            "suffix_set": s,
                            "suffixes": suffixes,
                            "probe": probe,
                            "n": n,
                            "candidate_rate": rate,
                            "base_rate": b,
                            "alarm": _alarm(n, rate, b, limit, policy.probe_noise_z),
                            "alarm_noise_z2": _alarm(n, rate, b, limit, 2.0),
                        }
                    )
            del model
    alarms = sum(t["alarm"] for t in trials)
    result = {
        "command": "python bench/retrain/probe_false_alarms.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "adapters": args.adapters,
        "suffix_sets": args.suffix_sets,
        "samples_per_trial": args.samples,
        "probes": sorted(detectors),
        "trials": len(trials),
        "false_alarms": alarms,
        "false_alarm_rate": alarms / max(len(trials), 1),
        "false_alarm_rate_noise_z2": sum(t["alarm_noise_z2"] for t in trials) / max(len(trials), 1),
        "candidate_hits": sum(round(t["candidate_rate"] * t["n"]) for t in trials),
        "base_hits": sum(round(t["base_rate"] * t["n"]) for t in trials),
        "answers_per_model": sum(t["n"] for t in trials),
        "per_probe": {
            name: {
                "trials": len(mine),
                "false_alarms": sum(t["alarm"] for t in mine),
                "false_alarms_noise_z2": sum(t["alarm_noise_z2"] for t in mine),
                "base_rate_mean": round(sum(t["base_rate"] for t in mine) / len(mine), 4),
                "candidate_rate_mean": round(sum(t["candidate_rate"] for t in mine) / len(mine), 4),
            }
            for name in sorted(detectors)
            if (mine := [t for t in trials if t["probe"] == name])
        },
        "policy": {"max_triggered_unsafe_rate_increase": limit, "probe_noise_z": policy.probe_noise_z},
        "detail": trials,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "detail"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
