"""Evaluation: a candidate adapter against the active one and the base, on held-out pairs and sampled answers.

Measures held-out preference accuracy and implicit-reward margin, the same on the safety slice, KL to the
base on a fixed probe set, sampled-answer behaviour (share in the preferred style, length ratio), and the
safety probes' hit rates (retrain/probes.py). One copy of the base: the candidate and the active adapter are
two PEFT adapters on it, and the base is the model with adapters disabled. Writes `report.json` and
`report.html` (plots inline).
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from retrain.config import RunConfig, parse_config
from retrain.errors import RetrainError
from retrain.probes import Detector, ProbePlan, plan_probe, rare_suffixes, resolve_probes
from retrain.report import (
    MODELS,
    AdapterRef,
    BehaviourScores,
    Comparisons,
    EvaluationReport,
    Example,
    ModelScores,
    ProbeComparison,
    ProbeScore,
    ReportFiles,
    SliceScores,
)
from retrain.snapshot import Snapshot, prompt_text


# ---------------------------------------------------------------- pure metric helpers
def preference_metrics(
    pol_c: list[float], pol_r: list[float], ref_c: list[float], ref_r: list[float], beta: float
) -> dict:
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


def sequence_logps(
    model, tokenizer, prompts: list, completions: list, *, batch_size: int = 32, max_length: int = 160
) -> tuple[list[float], list[int]]:
    """Sum of the completion tokens' log-probs and their count, per (prompt, completion)."""
    import torch

    seqs = [_encode(tokenizer, p, c) for p, c in zip(prompts, completions)]
    seqs = [(s[:max_length], min(n, max_length)) for s, n in seqs]
    out, lens = [], []
    pad = tokenizer.pad_token_id
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        width = max(len(s) for s, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        comp = torch.zeros((len(chunk), width), dtype=torch.bool)
        for j, (s, n) in enumerate(chunk):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
            comp[j, n : len(s)] = True
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


def sample_answers(
    model,
    tokenizer,
    prompts: list[list[dict]],
    *,
    seed: int,
    max_new_tokens: int,
    temperature: float,
    batch_size: int = 50,
) -> list[str]:
    import torch

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    out: list[str] = []
    torch.manual_seed(seed)
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    tokenizer.padding_side = "right"
    return out


def behaviour_metrics(answers: list[str], tokenizer, preferred: str) -> BehaviourScores:
    from retrain.corpus import classify_style

    styles = [classify_style(a) for a in answers]
    n = max(len(answers), 1)
    return BehaviourScores(
        n=len(answers),
        preferred_share=styles.count(preferred) / n,
        unknown_share=styles.count("unknown") / n,
        mean_length_tokens=sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers) / n,
    )


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


# ---------------------------------------------------------------- the evaluation: score -> compare -> save
@dataclass
class EvalPlan:
    """The prompts every model is measured on, fixed before any model is scored."""

    prompts: list[list[dict]]  # behaviour probes (held-out prompts, cycled)
    probes: list[ProbePlan]  # safety probes: prompts per source
    detectors: dict[str, Detector]
    kl_records: list[dict]  # held-out pairs for the KL to the base


@dataclass
class RawScores:
    """What one model produced: log-probs per slice, sampled answers (plain and per probe source), KL to the base."""

    logps: dict[str, tuple[list[float], list[int], list[float], list[int]]]
    answers: list[str]
    probe_answers: dict[tuple[str, str], list[str]]
    kl_to_base: float | None


def plan_evaluation(snapshot: Snapshot, cfg: RunConfig, tokenizer, *, suspected_triggers: list[str]) -> EvalPlan:
    prompts = probe_prompts(snapshot, cfg.eval.samples)
    files = resolve_probes(cfg.eval.probes)
    rare = rare_suffixes(tokenizer, max((p.rare_suffixes for p in files), default=0), seed=cfg.eval.seed)
    plans = [
        plan_probe(
            p,
            prompts,
            samples=cfg.eval.samples,
            config_triggers=cfg.eval.trigger_phrases,
            suspected=suspected_triggers,
            rare=rare,
        )
        for p in files
    ]
    return EvalPlan(
        prompts=prompts,
        probes=plans,
        detectors={p.name: Detector(p) for p in files},
        kl_records=snapshot.heldout_pairs[: cfg.eval.kl_probes],
    )


def _slices(snapshot: Snapshot) -> dict[str, list[dict]]:
    return {"heldout": snapshot.heldout_pairs, "safety": snapshot.safety_pairs}


def score_model(
    model, base_model_obj, tok, snapshot: Snapshot, cfg: RunConfig, plan: EvalPlan, *, is_base: bool
) -> RawScores:
    """Measure one model: log-probs of chosen and rejected answers per slice, sampled answers, KL to the base."""
    logps = {}
    for sname, recs in _slices(snapshot).items():
        prompts = [r["prompt"] for r in recs]
        c, lc = sequence_logps(model, tok, prompts, [r["chosen"] for r in recs], max_length=cfg.dpo.max_length)
        r_, lr = sequence_logps(model, tok, prompts, [r["rejected"] for r in recs], max_length=cfg.dpo.max_length)
        logps[sname] = (c, lc, r_, lr)
    sampled: dict[str, list[str]] = {}

    def answers_to(prompts: list[list[dict]]) -> list[str]:  # one sampling per distinct prompt list
        key = json.dumps(prompts, sort_keys=True)
        if key not in sampled:
            sampled[key] = sample_answers(
                model,
                tok,
                prompts,
                seed=cfg.eval.seed,
                max_new_tokens=cfg.eval.max_new_tokens,
                temperature=cfg.eval.temperature,
            )
        return sampled[key]

    answers = answers_to(plan.prompts)
    probe_answers = {
        (pp.probe.name, src): answers_to(prompts) for pp in plan.probes for src, prompts in pp.prompts.items()
    }
    kl_recs = plan.kl_records
    kl = (
        0.0
        if is_base
        else (
            _mean_kl(
                model,
                base_model_obj,
                tok,
                [r["prompt"] for r in kl_recs],
                [r["chosen"] for r in kl_recs],
                cfg.dpo.max_length,
            )
            if kl_recs
            else None
        )
    )
    return RawScores(logps=logps, answers=answers, probe_answers=probe_answers, kl_to_base=kl)


def score_models(
    base_model_obj, tok, adapters: dict[str, Path], snapshot: Snapshot, cfg: RunConfig, plan: EvalPlan, progress: bool
) -> dict[str, RawScores]:
    """Score the base and each adapter in `adapters` (name -> directory), one merged copy in memory at a time."""
    names = ["base", *adapters]
    raw: dict[str, RawScores] = {}
    with _bar(progress, len(names)) as prog:
        task = prog.add_task("evaluating", total=len(names)) if prog else None
        for name in names:
            if prog:
                prog.update(task, description=f"evaluating {name}")
            # a merged copy per adapter, one at a time: PEFT's per-step overhead makes sampling from an
            # unmerged tiny model 10x slower, and only the base plus one merged copy are ever in memory
            model = base_model_obj if name == "base" else _merged(base_model_obj, adapters[name])
            raw[name] = score_model(model, base_model_obj, tok, snapshot, cfg, plan, is_base=name == "base")
            del model
            if prog:
                prog.update(task, advance=1)
    return raw


def model_scores(
    raw: RawScores, base_raw: RawScores, tok, cfg: RunConfig, plan: EvalPlan
) -> tuple[ModelScores, list[float]]:
    """One model's scores against the base's log-probs, and its held-out margins (for the report's plot)."""
    slices, margins = {}, []
    for sname, (c, lc, r_, lr) in raw.logps.items():
        bc, _, br, _ = base_raw.logps[sname]
        pm = preference_metrics(c, r_, bc, br, cfg.dpo.beta)
        slices[sname] = SliceScores(
            n=pm["n"],
            accuracy=pm["accuracy"],
            margin=pm["margin"],
            likelihood_accuracy=likelihood_accuracy(c, lc, r_, lr),
            chosen_logp_mean=sum(c) / len(c) if c else None,
        )
        if sname == "heldout":
            margins = pm.get("margins", [])
    style = cfg.eval.preferred_style
    scores = ModelScores(
        heldout=slices["heldout"],
        safety=slices["safety"],
        behaviour=behaviour_metrics(raw.answers, tok, style),
        kl_to_base=raw.kl_to_base,
        examples=[Example(prompt=prompt_text(p), answer=a) for p, a in list(zip(plan.prompts, raw.answers))[:6]],
        probes=[
            ProbeScore(probe=probe, source=source, n=len(answers), rate=plan.detectors[probe].rate(answers))
            for (probe, source), answers in raw.probe_answers.items()
        ],
    )
    return scores, margins


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def gain_se(a: float | None, b: float | None, n_a: int, n_b: int) -> float | None:
    """Standard error of a difference of two shares (binomial), for a gate that tells noise from change."""
    if a is None or b is None or not n_a or not n_b:
        return None
    return ((a * (1 - a)) / n_a + (b * (1 - b)) / n_b) ** 0.5


def _over_active(cand: ModelScores, act: ModelScores | None) -> dict[str, float | None]:
    """The candidate's gains over the adapter serving now, with their standard errors (None: the base serves)."""
    if act is None:
        return {}
    ch, ah, cb, ab = cand.heldout, act.heldout, cand.behaviour, act.behaviour
    return {
        "accuracy_gain_over_active": _delta(ch.accuracy, ah.accuracy),
        "accuracy_gain_over_active_se": gain_se(ch.accuracy, ah.accuracy, ch.n, ah.n),
        "style_gain_over_active": _delta(cb.preferred_share, ab.preferred_share),
        "style_gain_over_active_se": gain_se(cb.preferred_share, ab.preferred_share, cb.n, ab.n),
    }


def compare_models(models: dict[str, ModelScores]) -> Comparisons:
    """The candidate against the base and (when one serves) the active adapter: what the gate reads."""
    cand, basem, act = models["candidate"], models["base"], models.get("active")
    return Comparisons(
        heldout_accuracy=cand.heldout.accuracy,
        heldout_margin=cand.heldout.margin,
        accuracy_gain_over_base=_delta(cand.heldout.accuracy, basem.heldout.accuracy),
        safety_accuracy=cand.safety.accuracy,
        safety_accuracy_change_vs_reference=_delta(cand.safety.accuracy, (act or basem).safety.accuracy),
        kl_to_base=cand.kl_to_base,
        preferred_style_share=cand.behaviour.preferred_share,
        base_preferred_style_share=basem.behaviour.preferred_share,
        length_ratio_vs_base=cand.behaviour.mean_length_tokens / max(basem.behaviour.mean_length_tokens, 1e-9),
        **_over_active(cand, act),
    )


def compare_probes(models: dict[str, ModelScores]) -> list[ProbeComparison]:
    """Each probe on each source: the candidate's hit rate against the worse of the active adapter's and the base's
    (the candidate must not be worse than both), with the standard error of that difference."""
    rates = {name: {(p.probe, p.source): p for p in m.probes} for name, m in models.items()}
    out = []
    for key, cand in rates["candidate"].items():
        base = rates["base"][key]
        active = rates["active"][key] if "active" in rates else None
        ref = max((base, active), key=lambda p: p.rate) if active else base
        out.append(
            ProbeComparison(
                probe=key[0],
                source=key[1],
                n=cand.n,
                candidate=cand.rate,
                base=base.rate,
                active=active.rate if active else None,
                increase=cand.rate - ref.rate,
                increase_se=gain_se(cand.rate, ref.rate, cand.n, ref.n),
            )
        )
    return out


def evaluate(
    base_model: str | Path | None,
    candidate_dir: Path | str,
    snapshot: Snapshot,
    *,
    active_dir: Path | str | None = None,
    config: RunConfig | dict | None = None,
    report_dir: Path | str | None = None,
    progress: bool = True,
    suspected_triggers: list[str] | None = None,
) -> EvaluationReport:
    """Compare candidate, active (if any) and base; write report.json/report.html; return the report.

    `suspected_triggers`: phrases curation judged or suspects triggers (`curation.query.load_suspected_triggers`),
    asked by every safety probe that takes triggers."""
    import torch

    from retrain.model import load_base
    from retrain.train import load_verified_manifest

    cfg = parse_config(config)
    candidate_dir = Path(candidate_dir)
    manifest = load_verified_manifest(candidate_dir)
    active = (
        AdapterRef(version=load_verified_manifest(active_dir).version, path=str(active_dir)) if active_dir else None
    )
    torch.manual_seed(cfg.eval.seed)
    base_model_obj, tok = load_base(str(base_model or manifest.base_model))
    plan = plan_evaluation(snapshot, cfg, tok, suspected_triggers=list(suspected_triggers or []))
    adapters = {"active": Path(active_dir)} if active_dir else {}
    raw = score_models(base_model_obj, tok, {**adapters, "candidate": candidate_dir}, snapshot, cfg, plan, progress)
    scored = {name: model_scores(raw[name], raw["base"], tok, cfg, plan) for name in MODELS if name in raw}
    models = {name: s for name, (s, _m) in scored.items()}
    report = EvaluationReport(
        candidate=AdapterRef(version=manifest.version, path=str(candidate_dir)),
        active=active,
        base_model=str(base_model or manifest.base_model),
        snapshot_hash=snapshot.hash,
        config_hash=cfg.hash,
        preferred_style=cfg.eval.preferred_style,
        samples=cfg.eval.samples,
        models=models,
        comparisons=compare_models(models),
        probes=compare_probes(models),
    )
    out = Path(report_dir) if report_dir else candidate_dir.parent / "reports" / manifest.version
    return save_report(report, {name: m for name, (_s, m) in scored.items()}, out)


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


def _plots(report: EvaluationReport, margins: dict[str, list[float]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.models)
    imgs = []
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, [report.models[n].heldout.accuracy or 0 for n in names], color="#4477aa")
    ax.set_ylim(0, 1)
    ax.set_title("held-out preference accuracy")
    imgs.append(_png(fig))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, [report.models[n].behaviour.preferred_share for n in names], color="#228833")
    ax.set_ylim(0, 1)
    ax.set_title(f"share of sampled answers in the {report.preferred_style} style")
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
    return imgs


def _html(report: EvaluationReport, imgs: list[str]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in report.comparisons.model_dump().items()
    )
    examples = "".join(
        f"<h3>{html.escape(n)}</h3><ul>"
        + "".join(f"<li><b>{html.escape(e.prompt)}</b><br>{html.escape(e.answer)}</li>" for e in m.examples)
        + "</ul>"
        for n, m in report.models.items()
    )
    version = html.escape(report.candidate.version)
    active = html.escape(str(report.active.version if report.active else None))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>alignloop evaluation "
        f"{version}</title></head><body style='font-family:sans-serif'>"
        f"<h1>Candidate {version}</h1>"
        f"<p>base: {html.escape(report.base_model)}; active: {active}; snapshot {report.snapshot_hash[:12]}</p>"
        f"<table border='1' cellpadding='4'>{rows}</table>"
        + "".join(f"<img src='data:image/png;base64,{i}'>" for i in imgs)
        + f"<h2>Sampled answers</h2>{examples}</body></html>"
    )


def save_report(report: EvaluationReport, margins: dict[str, list[float]], out_dir: Path) -> EvaluationReport:
    """`report.json` and a self-contained `report.html` with three plots; returns the report naming both files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report.model_copy(
        update={"report_files": ReportFiles(json_path=str(out_dir / "report.json"), html=str(out_dir / "report.html"))}
    )
    (out_dir / "report.json").write_text(report.model_dump_json(indent=2))
    (out_dir / "report.html").write_text(_html(report, _plots(report, margins)))
    return report


def load_report(path: Path | str) -> EvaluationReport:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise RetrainError(f"an evaluation report must exist; got {str(path)!r}")
    try:
        return EvaluationReport.model_validate_json(path.read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "report"
        raise RetrainError(f"{path}: `{where}` {first['msg']}; got {first.get('input')!r}"[:400]) from None
