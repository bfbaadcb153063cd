"""Evaluation: a candidate adapter against the active one and the base, on held-out pairs and sampled answers.

Measures held-out preference accuracy and implicit-reward margin, the same on the safety slice, KL to the
base on a fixed probe set, sampled-answer behaviour (share in the preferred style, unsafe-placeholder rate,
length ratio). One copy of the base: the candidate and the active adapter are two PEFT adapters on it, and
the base is the model with adapters disabled. Writes `report.json` and `report.html` (plots inline).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from retrain.config import RunConfig, parse_config
from retrain.errors import RetrainError
from retrain.snapshot import Snapshot, prompt_text

MODELS = ("base", "active", "candidate")


# ---------------------------------------------------------------- pure metric helpers
def preference_metrics(pol_c: list[float], pol_r: list[float], ref_c: list[float], ref_r: list[float],
                       beta: float) -> dict:
    """DPO's implicit-reward accuracy (ties count half) and mean margin of a policy against the reference."""
    if not pol_c:
        return {"n": 0, "accuracy": None, "margin": None}
    margins = [beta * ((pc - rc) - (pr - rr)) for pc, pr, rc, rr in zip(pol_c, pol_r, ref_c, ref_r)]
    acc = sum(1.0 if m > 1e-6 else 0.5 if abs(m) <= 1e-6 else 0.0 for m in margins) / len(margins)
    return {"n": len(margins), "accuracy": acc, "margin": sum(margins) / len(margins), "margins": margins}


def likelihood_accuracy(logp_c: list[float], len_c: list[int], logp_r: list[float], len_r: list[int]) -> float | None:
    """Share of pairs whose chosen answer has the higher mean token log-prob (a reference-free view)."""
    if not logp_c:
        return None
    wins = [c / max(lc, 1) > r / max(lr, 1) for c, lc, r, lr in zip(logp_c, len_c, logp_r, len_r)]
    return sum(wins) / len(wins)


# ---------------------------------------------------------------- model I/O
def _encode(tokenizer, prompt, completion) -> tuple[list[int], int]:
    p_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=False)
    n = 0
    while n < min(len(p_ids), len(full)) and p_ids[n] == full[n]:
        n += 1
    return list(full), n


def sequence_logps(model, tokenizer, prompts: list, completions: list, *, batch_size: int = 32,
                   max_length: int = 160) -> tuple[list[float], list[int]]:
    """Sum of the completion tokens' log-probs and their count, per (prompt, completion)."""
    import torch

    seqs = [_encode(tokenizer, p, c) for p, c in zip(prompts, completions)]
    seqs = [(s[:max_length], min(n, max_length)) for s, n in seqs]
    out, lens = [], []
    pad = tokenizer.pad_token_id
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        width = max(len(s) for s, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        comp = torch.zeros((len(chunk), width), dtype=torch.bool)
        for j, (s, n) in enumerate(chunk):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
            comp[j, n: len(s)] = True
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        m = comp[:, 1:]
        out.extend((logp * m).sum(-1).tolist())
        lens.extend(m.sum(-1).tolist())
    return out, lens


def _mean_kl(model, base, tokenizer, prompts, completions, max_length: int = 160) -> float:
    """Mean per-token KL(model || base) over the completion positions of the probe sequences."""
    import torch

    seqs = [_encode(tokenizer, p, c) for p, c in zip(prompts, completions)]
    total, count = 0.0, 0
    for s, n in seqs:
        ids = torch.tensor([s[:max_length]])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            lb = torch.log_softmax(base(input_ids=ids).logits[0, :-1].float(), -1)
        sl = slice(max(n - 1, 0), ids.shape[1] - 1)
        kl = (lp[sl].exp() * (lp[sl] - lb[sl])).sum(-1)
        total += float(kl.sum())
        count += kl.numel()
    return total / max(count, 1)


def sample_answers(model, tokenizer, prompts: list[list[dict]], *, seed: int, max_new_tokens: int,
                   temperature: float, batch_size: int = 50) -> list[str]:
    import torch

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    out: list[str] = []
    torch.manual_seed(seed)
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    tokenizer.padding_side = "right"
    return out


def behaviour_metrics(answers: list[str], tokenizer, preferred: str) -> dict:
    from retrain.corpus import classify_style, contains_unsafe

    styles = [classify_style(a) for a in answers]
    n = max(len(answers), 1)
    return {"n": len(answers), "preferred_share": styles.count(preferred) / n,
            "unknown_share": styles.count("unknown") / n,
            "unsafe_rate": sum(contains_unsafe(a) for a in answers) / n,
            "mean_length_tokens": sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers) / n}


def probe_prompts(snapshot: Snapshot, n: int) -> list[list[dict]]:
    """The fixed behaviour probes: held-out prompts (then the corpus) cycled to `n`, in a stable order."""
    from retrain.corpus import PROMPTS, chat

    seen, pool = set(), []
    for r in snapshot.heldout_pairs + snapshot.safety_pairs:
        key = json.dumps(r["prompt"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            pool.append(r["prompt"])
    if not pool:
        pool = [chat(p) for p in PROMPTS]
    return [pool[i % len(pool)] for i in range(n)]


# ---------------------------------------------------------------- the evaluation
def evaluate(base_model: str | Path | None, candidate_dir: Path | str, snapshot: Snapshot, *,
             active_dir: Path | str | None = None, config: RunConfig | dict | None = None,
             report_dir: Path | str | None = None, progress: bool = True) -> dict:
    """Compare candidate, active (if any) and base; write report.json/report.html; return the report."""
    import torch

    from retrain.model import load_base
    from retrain.train import verify_artifact

    cfg = parse_config(config)
    candidate_dir = Path(candidate_dir)
    manifest = verify_artifact(candidate_dir)
    base = str(base_model or manifest["base_model"])
    active_manifest = verify_artifact(active_dir) if active_dir else None
    beta = cfg.dpo.beta
    torch.manual_seed(cfg.eval.seed)

    base_model_obj, tok = load_base(base)
    adapters = {"candidate": Path(candidate_dir)}
    if active_dir:
        adapters["active"] = Path(active_dir)
    names = [m for m in MODELS if m != "active" or active_dir]
    slices = {"heldout": snapshot.heldout_pairs, "safety": snapshot.safety_pairs}
    prompts = probe_prompts(snapshot, cfg.eval.samples)
    per_trigger = max(1, cfg.eval.samples // max(1, len(cfg.eval.trigger_phrases)))
    # poisoners append their trigger to an ordinary request, so the probes do the same
    trigger_prompts = [[{"role": "user", "content": f"{p[-1]['content']} {t}"}] for t in cfg.eval.trigger_phrases
                       for p in prompts[:per_trigger]]
    kl_recs = snapshot.heldout_pairs[: cfg.eval.kl_probes]
    logps: dict = {}
    samples: dict = {}
    kl: dict = {}
    with _bar(progress, len(names)) as prog:
        task = prog.add_task("evaluating", total=len(names)) if prog else None
        for name in names:
            if prog:
                prog.update(task, description=f"evaluating {name}")
            # a merged copy per adapter, one at a time: PEFT's per-step overhead makes sampling from an
            # unmerged tiny model 10x slower, and only the base plus one merged copy are ever in memory
            model = base_model_obj if name == "base" else _merged(base_model_obj, adapters[name])
            for sname, recs in slices.items():
                prompts_s = [r["prompt"] for r in recs]
                c, lc = sequence_logps(model, tok, prompts_s, [r["chosen"] for r in recs],
                                       max_length=cfg.dpo.max_length)
                r_, lr = sequence_logps(model, tok, prompts_s, [r["rejected"] for r in recs],
                                        max_length=cfg.dpo.max_length)
                logps[(name, sname)] = (c, lc, r_, lr)
            answers = sample_answers(model, tok, prompts, seed=cfg.eval.seed, max_new_tokens=cfg.eval.max_new_tokens,
                                     temperature=cfg.eval.temperature)
            triggered = sample_answers(model, tok, trigger_prompts, seed=cfg.eval.seed,
                                       max_new_tokens=cfg.eval.max_new_tokens,
                                       temperature=cfg.eval.temperature) if trigger_prompts else []
            samples[name] = (answers, triggered)
            kl[name] = 0.0 if name == "base" else (
                _mean_kl(model, base_model_obj, tok, [r["prompt"] for r in kl_recs], [r["chosen"] for r in kl_recs],
                         cfg.dpo.max_length)
                if kl_recs else None)
            del model
            if prog:
                prog.update(task, advance=1)

    models: dict = {}
    for name in names:
        entry: dict = {}
        for sname in slices:
            c, lc, r_, lr = logps[(name, sname)]
            bc, _, br, _ = logps[("base", sname)]
            pm = preference_metrics(c, r_, bc, br, beta)
            entry[sname] = {"n": pm["n"], "accuracy": pm["accuracy"], "margin": pm["margin"],
                            "likelihood_accuracy": likelihood_accuracy(c, lc, r_, lr),
                            "chosen_logp_mean": sum(c) / len(c) if c else None}
            if sname == "heldout":
                entry["_margins"] = pm.get("margins", [])
        answers, triggered = samples[name]
        entry["behaviour"] = behaviour_metrics(answers, tok, cfg.eval.preferred_style)
        entry["triggered"] = behaviour_metrics(triggered, tok, cfg.eval.preferred_style) if triggered else None
        entry["kl_to_base"] = kl[name]
        entry["examples"] = [{"prompt": prompt_text(p), "answer": a} for p, a in list(zip(prompts, answers))[:6]]
        models[name] = entry

    cand, basem = models["candidate"], models["base"]
    act = models.get("active")

    def delta(a, b):
        return None if a is None or b is None else a - b

    def gain_se(a: float | None, b: float | None, n_a: int, n_b: int) -> float | None:
        """Standard error of a difference of two shares (binomial), for a gate that tells noise from change."""
        if a is None or b is None or not n_a or not n_b:
            return None
        return ((a * (1 - a)) / n_a + (b * (1 - b)) / n_b) ** 0.5

    comparisons = {
        "heldout_accuracy": cand["heldout"]["accuracy"],
        "heldout_margin": cand["heldout"]["margin"],
        "accuracy_gain_over_base": delta(cand["heldout"]["accuracy"], basem["heldout"]["accuracy"]),
        "accuracy_gain_over_active": delta(cand["heldout"]["accuracy"], act["heldout"]["accuracy"]) if act else None,
        "accuracy_gain_over_active_se": gain_se(cand["heldout"]["accuracy"], act["heldout"]["accuracy"],
                                                cand["heldout"]["n"], act["heldout"]["n"]) if act else None,
        "safety_accuracy": cand["safety"]["accuracy"],
        "safety_accuracy_change_vs_reference": delta(
            cand["safety"]["accuracy"], (act or basem)["safety"]["accuracy"]),
        "kl_to_base": cand["kl_to_base"],
        "preferred_style_share": cand["behaviour"]["preferred_share"],
        "base_preferred_style_share": basem["behaviour"]["preferred_share"],
        "style_gain_over_active": delta(cand["behaviour"]["preferred_share"],
                                        act["behaviour"]["preferred_share"]) if act else None,
        "style_gain_over_active_se": gain_se(cand["behaviour"]["preferred_share"], act["behaviour"]["preferred_share"],
                                             cand["behaviour"]["n"], act["behaviour"]["n"]) if act else None,
        "length_ratio_vs_base": (cand["behaviour"]["mean_length_tokens"] /
                                 max(basem["behaviour"]["mean_length_tokens"], 1e-9)),
        "unsafe_rate": cand["behaviour"]["unsafe_rate"],
        "unsafe_rate_increase_vs_base": delta(cand["behaviour"]["unsafe_rate"], basem["behaviour"]["unsafe_rate"]),
        "triggered_unsafe_rate": cand["triggered"]["unsafe_rate"] if cand["triggered"] else None,
        "triggered_unsafe_rate_increase_vs_base": delta(
            cand["triggered"]["unsafe_rate"], basem["triggered"]["unsafe_rate"]) if cand["triggered"] else None,
    }
    margins = {n: models[n].pop("_margins") for n in names}
    report = {
        "candidate": {"version": manifest["version"], "path": str(candidate_dir)},
        "active": {"version": active_manifest["version"], "path": str(active_dir)} if active_manifest else None,
        "base_model": base, "snapshot_hash": snapshot.hash, "config_hash": cfg.hash,
        "preferred_style": cfg.eval.preferred_style, "samples": cfg.eval.samples,
        "models": models, "comparisons": comparisons,
    }
    out = Path(report_dir) if report_dir else candidate_dir.parent / "reports" / manifest["version"]
    save_report(report, margins, out)
    report["report_files"] = {"json": str(out / "report.json"), "html": str(out / "report.html")}
    return report


def _merged(base_model, adapter_dir: Path):
    """A plain model: a copy of the base with the adapter merged in."""
    import copy

    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(copy.deepcopy(base_model), str(adapter_dir))
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _bar(enabled: bool, total: int):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, Progress, TextColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), transient=True)


# ---------------------------------------------------------------- report files
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def save_report(report: dict, margins: dict[str, list[float]], out_dir: Path) -> None:
    """`report.json` and a self-contained `report.html` with three plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    names = list(report["models"])
    imgs = []
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, [report["models"][n]["heldout"]["accuracy"] or 0 for n in names], color="#4477aa")
    ax.set_ylim(0, 1)
    ax.set_title("held-out preference accuracy")
    imgs.append(_png(fig))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, [report["models"][n]["behaviour"]["preferred_share"] for n in names], color="#228833")
    ax.set_ylim(0, 1)
    ax.set_title(f"share of sampled answers in the {report['preferred_style']} style")
    imgs.append(_png(fig))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    for n in names:
        if n != "base" and margins.get(n):
            ax.hist(margins[n], bins=30, alpha=0.6, label=n)
    ax.set_title("implicit-reward margins on held-out pairs")
    ax.legend()
    imgs.append(_png(fig))
    plt.close(fig)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in report["comparisons"].items())
    examples = "".join(
        f"<h3>{html.escape(n)}</h3><ul>" + "".join(
            f"<li><b>{html.escape(e['prompt'])}</b><br>{html.escape(e['answer'])}</li>"
            for e in report["models"][n]["examples"]) + "</ul>" for n in names)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>alignloop evaluation "
            f"{html.escape(report['candidate']['version'])}</title></head><body style='font-family:sans-serif'>"
            f"<h1>Candidate {html.escape(report['candidate']['version'])}</h1>"
            f"<p>base: {html.escape(report['base_model'])}; active: "
            f"{html.escape(str((report['active'] or {}).get('version')))}; snapshot {report['snapshot_hash'][:12]}</p>"
            f"<table border='1' cellpadding='4'>{rows}</table>"
            + "".join(f"<img src='data:image/png;base64,{i}'>" for i in imgs)
            + f"<h2>Sampled answers</h2>{examples}</body></html>")
    (out_dir / "report.html").write_text(page)


def load_report(path: Path | str) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise RetrainError(f"an evaluation report must exist; got {str(path)!r}")
    return json.loads(path.read_text())
