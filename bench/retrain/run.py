"""Training throughput: alignloop's DPO training vs plain TRL DPOTrainer vs a hand-written PyTorch DPO loop.

Same tiny model, same LoRA config, same pairs, batches of 8 pairs, as many epochs as alignloop's shipped run
config trains (retrain/configs/dpo-tiny.yaml: 2; `--epochs 1` for a single pass). Each variant runs in its own
child process (so peak RSS is its own), one after the other, in one command. Plain TRL is run twice: with
TRL's own defaults ("trl_defaults": bf16, gradient checkpointing, lr 1e-6) and with only the CPU-sane
settings ("trl_plain": fp32, no checkpointing, alignloop's lr, no reference cache).

    python bench/retrain/run.py [--pairs 400] [--out bench/results/retrain.json]

alignloop is measured twice: "cold" (reference log-probs computed and cached, included in the time) and
"warm" (a retrain over pairs it has seen: the base's log-probs come from the cache). Ratios are against the
other variants measured in the same run, since absolute times drift on a shared machine; the variants run
interleaved over --rounds and each keeps its best round. Wall-clock ratios and CPU-time ratios (pairs per
CPU-second of the child process: steadier when other work shares the cores) are both reported; children use
one torch thread by default (--threads). Every variant's clock starts before the base model is loaded from its
directory (alignloop's run_training loads it itself) and stops when training ends (nothing is saved).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BATCH = 8


def _data(n: int) -> list[dict]:
    from retrain.corpus import make_pairs
    from retrain.snapshot import to_trl_pairs

    return to_trl_pairs(make_pairs(n, seed=11))


def _tokens(tok, rows) -> int:
    from retrain.evaluate import _encode

    total = 0
    for r in rows:
        total += len(_encode(tok, r["prompt"], r["chosen"])[0]) + len(_encode(tok, r["prompt"], r["rejected"])[0])
    return total


def _lora(cfg, model):
    from retrain.train import _lora_config

    return _lora_config(cfg, model)


def variant_alignloop(n: int, warm: bool, epochs: float) -> dict:
    # imported before the clock starts, as in the other variants
    from datasets import Dataset  # noqa: F401
    from peft import LoraConfig, PeftModel  # noqa: F401
    from transformers import AutoModelForCausalLM, set_seed  # noqa: F401
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer  # noqa: F401

    from retrain import train as rt
    from retrain.config import load_run_config
    from retrain.model import ensure_base_model
    from retrain.snapshot import Snapshot

    base = str(ensure_base_model(seed=0, progress=False))
    cfg = load_run_config()
    cfg = cfg.model_copy(
        update={
            "dpo": cfg.dpo.model_copy(update={"epochs": epochs, "batch_size": BATCH}),
            "kto": cfg.kto.model_copy(update={"enabled": False}),
        }
    )
    rows = _data(n)
    snap = Snapshot(rows, [], [], [], [], hash="bench")
    with tempfile.TemporaryDirectory() as tmp:
        cache_file = Path(tmp) / "ref.json"
        rt.RefLogpCache.for_base = staticmethod(lambda *_a: rt.RefLogpCache(cache_file))
        if warm:  # fill the cache as an earlier retrain over these pairs would have
            rt.run_training(base, snap, cfg, Path(tmp) / "w0", progress=False)
        t0, c0 = time.perf_counter(), time.process_time()
        _model, tok, metrics = rt.run_training(base, snap, cfg, Path(tmp) / "w1", progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "tokens": _tokens(tok, rows),
        "ref_cache_hits": metrics.get("dpo/ref_cache_hits"),
        "loss_type": cfg.dpo.loss_type,
    }


def variant_trl_defaults(n: int, epochs: float) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from retrain.config import load_run_config
    from retrain.model import ensure_base_model, load_base

    base = str(ensure_base_model(seed=0, progress=False))
    rows = _data(n)
    t0, c0 = time.perf_counter(), time.process_time()  # from the model directory, as alignloop's run_training
    model, tok = load_base(base)
    note = "TRL defaults (bf16, gradient checkpointing, lr 1e-6); only batch, epochs, CPU, no saving set"
    kwargs = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=BATCH,
        num_train_epochs=epochs,
        use_cpu=True,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
    )
    try:
        args = DPOConfig(**kwargs)
    except ValueError as exc:  # bf16 refused on this CPU: the closest default that runs
        note += f"; bf16 refused here ({str(exc).splitlines()[0][:80]}), ran fp32"
        args = DPOConfig(**kwargs, bf16=False)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=_lora(load_run_config(), model),
    )
    trainer.train()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "tokens": _tokens(tok, rows),
        "note": note,
        "bf16": args.bf16,
        "gradient_checkpointing": args.gradient_checkpointing,
    }


def variant_trl_plain(n: int, epochs: float) -> dict:
    """Plain TRL with only the CPU-sane settings alignloop also uses (fp32, no checkpointing, same lr); no cache."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from retrain.config import load_run_config
    from retrain.model import ensure_base_model, load_base

    cfg = load_run_config()
    base = str(ensure_base_model(seed=0, progress=False))
    rows = _data(n)
    t0, c0 = time.perf_counter(), time.process_time()
    model, tok = load_base(base)
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=BATCH,
        num_train_epochs=epochs,
        use_cpu=True,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        bf16=False,
        gradient_checkpointing=False,
        learning_rate=cfg.dpo.learning_rate,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=_lora(cfg, model),
    )
    trainer.train()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": wall, "cpu_seconds": cpu, "tokens": _tokens(tok, rows)}


def variant_handwritten(n: int, epochs: float) -> dict:
    """The same algorithm (sigmoid DPO, reference = adapter disabled) in plain PyTorch, nothing cached."""
    import torch
    import torch.nn.functional as F
    from peft import get_peft_model

    from retrain.config import load_run_config
    from retrain.evaluate import _encode
    from retrain.model import ensure_base_model, load_base

    cfg = load_run_config()
    base = str(ensure_base_model(seed=0, progress=False))
    rows = _data(n)
    t0, c0 = time.perf_counter(), time.process_time()
    model, tok = load_base(base)
    model = get_peft_model(model, _lora(cfg, model))
    enc = [(_encode(tok, r["prompt"], r["chosen"]), _encode(tok, r["prompt"], r["rejected"])) for r in rows]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.dpo.learning_rate)
    model.train()
    pad = tok.pad_token_id

    def batch_logps(m, ids, attn, comp):
        logits = m(input_ids=ids, attention_mask=attn).logits[:, :-1]
        lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return (lp * comp[:, 1:]).sum(-1)

    steps = [i for _ in range(round(epochs)) for i in range(0, len(enc), BATCH)]
    for i in steps:
        seqs = [c for c, _ in enc[i : i + BATCH]] + [r for _, r in enc[i : i + BATCH]]
        width = max(len(s) for s, _ in seqs)
        ids = torch.full((len(seqs), width), pad)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        comp = torch.zeros((len(seqs), width))
        for j, (s, plen) in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
            attn[j, : len(s)] = 1
            comp[j, plen : len(s)] = 1
        with torch.no_grad(), model.disable_adapter():
            ref = batch_logps(model, ids, attn, comp)
        pol = batch_logps(model, ids, attn, comp)
        k = len(seqs) // 2
        logits = cfg.dpo.beta * ((pol[:k] - ref[:k]) - (pol[k:] - ref[k:]))
        loss = -F.logsigmoid(logits).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "tokens": _tokens(tok, rows)}


def child(name: str, n: int, threads: int, epochs: float) -> dict:
    import torch

    torch.set_num_threads(threads)
    fn = {
        "alignloop_cold": lambda: variant_alignloop(n, False, epochs),
        "alignloop_warm": lambda: variant_alignloop(n, True, epochs),
        "trl_defaults": lambda: variant_trl_defaults(n, epochs),
        "trl_plain": lambda: variant_trl_plain(n, epochs),
        "handwritten": lambda: variant_handwritten(n, epochs),
    }[name]
    res = fn()
    res["pairs"], res["epochs"] = n, epochs
    res["pairs_per_s"] = round(n * epochs / res["seconds"], 2)  # pairs trained on per second, every epoch counted
    res["pairs_per_cpu_s"] = round(n * epochs / res["cpu_seconds"], 2)
    res["cpu_seconds"] = round(res["cpu_seconds"], 2)
    res["tokens_per_s"] = round(res["tokens"] * epochs / res["seconds"], 1)
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["seconds"] = round(res["seconds"], 2)
    return res


README = ROOT / "retrain" / "README.md"
BEGIN, END = "<!-- bench:retrain:begin -->", "<!-- bench:retrain:end -->"
LABELS = {
    "trl_defaults": "plain TRL `DPOTrainer`, TRL defaults (bf16, grad. checkpointing)",
    "trl_plain": "plain TRL `DPOTrainer`, fp32, no checkpointing, same lr",
    "handwritten": "hand-written PyTorch DPO loop (ref = adapter disabled)",
    "alignloop_cold": "alignloop, cold (reference log-probs computed once and cached, included)",
    "alignloop_warm": "alignloop, warm (retrain over pairs seen before: cached reference)",
}


def readme_text(results_dir: Path) -> str:
    """The README section from bench/results/retrain.json (and retrain_epoch1.json when there)."""
    d = json.loads((results_dir / "retrain.json").read_text())
    r, q = d["results"], d["ratios"]
    lines = [
        f"`{d['command']}` ({d.get('epochs', 1):g} epochs for every variant; {d['torch_threads']} torch thread "
        f"per child, {d['cpus']} cores, load {d['load_average_at_end'][0]:.1f} at the end, best of the "
        f"interleaved rounds, each clock from loading the base model to the end of training; {d['at'][:10]}; "
        "`bench/results/retrain.json`):",
        "",
        "| variant | pairs/s | tokens/s | peak RSS |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {label} | {r[k]['pairs_per_s']:.1f} | {r[k]['tokens_per_s']:,.0f} | {r[k]['peak_rss_mb']:.0f} MB |"
        for k, label in LABELS.items()
        if "pairs_per_s" in r.get(k, {})
    ]
    lines += [
        "",
        f"Cold: {q['alignloop_cold_vs_trl_plain']}x plain TRL and {q['alignloop_cold_vs_handwritten']}x the "
        f"hand-written loop; warm: {q['alignloop_warm_vs_trl_plain']}x and {q['alignloop_warm_vs_handwritten']}x "
        f"({q['alignloop_cold_vs_trl_defaults']}x and {q['alignloop_warm_vs_trl_defaults']}x TRL's defaults).",
    ]
    one = results_dir / "retrain_epoch1.json"
    if one.is_file():
        e = json.loads(one.read_text())["ratios"]
        lines.append(
            f"With a single epoch (`bench/results/retrain_epoch1.json`): "
            f"cold {e['alignloop_cold_vs_trl_plain']}x plain TRL and "
            f"{e['alignloop_cold_vs_handwritten']}x the hand-written loop; warm "
            f"{e['alignloop_warm_vs_trl_plain']}x and {e['alignloop_warm_vs_handwritten']}x."
        )
    return "\n".join(lines)


def write_readme(text: str) -> None:
    content = README.read_text()
    if BEGIN in content and END in content:
        head, rest = content.split(BEGIN, 1)
        README.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrain.json")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per child; 1 keeps a shared machine's load from distorting the ratios",
    )
    ap.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="epochs for every variant (default: the shipped run config's dpo.epochs, what alignloop "
        "really trains; a reference cache pays once per run, TRL and the hand-written loop pay "
        "for the reference every epoch)",
    )
    ap.add_argument("--slow-defaults-every-round", action="store_true")
    ap.add_argument(
        "--readme-only",
        action="store_true",
        help="only rewrite retrain/README.md's table from bench/results (no training)",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.readme_only:
        write_readme(readme_text(ROOT / "bench" / "results"))
        return 0
    if args.epochs is None:
        from retrain.config import load_run_config

        args.epochs = float(load_run_config().dpo.epochs)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.pairs, args.threads, args.epochs)))
        return 0
    from retrain.model import ensure_base_model

    ensure_base_model(seed=0)  # built once, outside the timed children
    env = {**os.environ, "TQDM_DISABLE": "1"}
    names = ("trl_defaults", "trl_plain", "handwritten", "alignloop_cold", "alignloop_warm")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    # rounds interleave the variants so that load from other work on the machine hits them alike;
    # each variant's fastest round counts
    for rnd in range(args.rounds):
        for name in names:
            if name == "trl_defaults" and rnd > 0 and not args.slow_defaults_every_round:
                continue  # 10-25x slower than the rest: one round is enough to place it
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--pairs",
                    str(args.pairs),
                    "--threads",
                    str(args.threads),
                    "--epochs",
                    str(args.epochs),
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            res = json.loads(line[-1][7:]) if proc.returncode == 0 and line else {"error": proc.stderr[-1500:]}
            runs[name].append(res)
            print(f"round {rnd} {name}", json.dumps(res)[:240], flush=True)
    results = {}
    for name, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        results[name] = (
            {**max(ok, key=lambda r: r["pairs_per_s"]), "rounds": [r["pairs_per_s"] for r in ok]} if ok else rs[-1]
        )

    def ratio(a, b, key="pairs_per_s"):
        try:
            return round(results[a][key] / results[b][key], 2)
        except (KeyError, ZeroDivisionError):
            return None

    import peft
    import torch
    import transformers
    import trl

    summary = {
        "what": f"DPO + LoRA on the embedded tiny Llama, batches of 8 pairs, {args.epochs:g} epochs, CPU",
        "command": f"python bench/retrain/run.py --pairs {args.pairs} --rounds {args.rounds} --epochs {args.epochs:g}",
        "epochs": args.epochs,
        "cpus": os.cpu_count(),
        "torch_threads": args.threads,
        "load_average_at_end": os.getloadavg(),
        "libraries": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "peft": peft.__version__,
        },
        "results": results,
        "ratios": {
            "alignloop_warm_vs_trl_defaults": ratio("alignloop_warm", "trl_defaults"),
            "alignloop_warm_vs_trl_plain": ratio("alignloop_warm", "trl_plain"),
            "alignloop_cold_vs_trl_plain": ratio("alignloop_cold", "trl_plain"),
            "alignloop_cold_vs_trl_defaults": ratio("alignloop_cold", "trl_defaults"),
            "alignloop_warm_vs_handwritten": ratio("alignloop_warm", "handwritten"),
            "alignloop_cold_vs_handwritten": ratio("alignloop_cold", "handwritten"),
        },
        "ratios_cpu_time": {
            f"{a}_vs_{b}": ratio(a, b, "pairs_per_cpu_s")
            for a in ("alignloop_warm", "alignloop_cold")
            for b in ("trl_defaults", "trl_plain", "handwritten")
        },
        "targets": {"vs_trl_defaults": 1.0, "vs_handwritten": 0.8},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["ratios"], indent=1))
    if args.out.name == "retrain.json":
        write_readme(readme_text(args.out.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
