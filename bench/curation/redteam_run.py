"""The red-team benchmark: every variant of `bench.curation.redteam` through the offline replay, scored per variant.

    python -m bench.curation.redteam_run [--variant ...] [--seed 11] [--out bench/results/curation_redteam.json]

Writes JSON and prints one line per variant. Targets (issue 13): trigger-backdoor event recall >= 0.99,
surviving poisoned pairs <= 0.05% of pairs and <= 25, bot accounts caught >= 0.95, brigade-targeted items
flipped <= 0.05, contrarians caught >= 0.90, honest events dropped <= 0.02, curated labels agree with the
honest majority >= 3 points more than the raw majority vote.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from bench.curation.redteam import VARIANTS, generate
from curation.replay import run_replay
from curation.settings import Policy


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _aggregate(pairs: list[dict], unpaired: list[dict]) -> dict[tuple[str, str], float]:
    """The curated label of (prompt, answer): pair and unpaired weights summed (> 0 preferred)."""
    agg: dict[tuple[str, str], float] = defaultdict(float)
    for p in pairs:
        prompt = p["prompt"][-1]["content"]
        agg[(prompt, p["chosen"][0]["content"])] += p["weight"]
        agg[(prompt, p["rejected"][0]["content"])] -= p["weight"]
    for u in unpaired:
        agg[(u["prompt"][-1]["content"], u["completion"][0]["content"])] += u["weight"] if u["label"] else -u["weight"]
    return agg


def _votes(lines: list[str], truth: list[dict]) -> tuple[dict, dict]:
    """Net votes per (prompt, answer) from every signal (ratings +-1, a comparison's chosen +1 and other -1,
    an edit's response -1 and its edited answer +1): honest accounts only, and every account."""
    cls = {t["event_id"]: t["class"] for t in truth if t.get("event_id")}
    honest: dict[tuple[str, str], int] = defaultdict(int)
    raw: dict[tuple[str, str], int] = defaultdict(int)
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if not isinstance(e, dict) or not isinstance(e.get("prompt"), str):
            continue
        signs = []
        if e.get("kind") == "rating":
            signs = [(e["response"], 1 if e["rating"] == "up" else -1)]
        elif e.get("kind") == "comparison" and e.get("chosen") is not None:
            signs = [(e["responses"][e["chosen"]], 1), (e["responses"][1 - e["chosen"]], -1)]
        elif e.get("kind") == "edit":
            signs = [(e["response"], -1), (e["edited"], 1)]
        for text, sign in signs:
            raw[(e["prompt"], text)] += sign
            if cls.get(e.get("event_id")) == "honest":
                honest[(e["prompt"], text)] += sign
    return honest, raw


def score(
    truth: list[dict],
    world: dict,
    decisions: list[dict],
    pairs: list[dict],
    unpaired: list[dict],
    lines: list[str] | None = None,
) -> dict:
    dropped = {d["event_id"] for d in decisions if d["decision"] == "drop"}
    events = [t for t in truth if t.get("event_id")]
    per_account: dict[str, list[bool]] = defaultdict(list)
    for t in events:
        per_account[t["user_id"]].append(t["event_id"] in dropped)

    def caught(cls: str) -> float | None:
        accounts = [u for u, role in world["accounts"].items() if role == cls]
        return _ratio(sum(sum(per_account[u]) >= 0.9 * len(per_account[u]) for u in accounts), len(accounts))

    poison = [t for t in events if t["class"] == "poison"]
    poison_ids = {t["event_id"] for t in poison}
    bad_pairs = [p for p in pairs if set(p["event_ids"]) & poison_ids]
    bad_unpaired = [u for u in unpaired if set(u["event_ids"]) & poison_ids]
    honest = [t for t in events if t["class"] == "honest"]
    why: dict[str, int] = defaultdict(int)
    reasons = {d["event_id"]: d["reasons"] for d in decisions}
    for t in honest:
        if t["event_id"] in dropped:
            for r in reasons[t["event_id"]]:
                why[r] += 1
    # labels per judged answer: honest majority, raw majority (every account), curated (pairs + unpaired); over
    # every signal when the raw lines are given, over ratings only otherwise
    key_of = {(i["prompt_id"], i["style"]): (i["prompt"], i["text"]) for i in world["items"]}
    honest_net: dict[tuple, int] = defaultdict(int)
    raw_net: dict[tuple, int] = defaultdict(int)
    rating_net: dict[tuple, int] = defaultdict(int)
    for t in events:
        if "label_up" in t and (t["prompt_id"], t["style"]) in key_of and t["class"] == "honest":
            rating_net[(t["prompt_id"], t["style"])] += 1 if t["label_up"] else -1
    if lines is not None:
        honest_by_text, raw_by_text = _votes(lines, truth)
        for k, text_key in key_of.items():
            if honest_by_text.get(text_key):
                honest_net[k] = honest_by_text[text_key]
            if raw_by_text.get(text_key):
                raw_net[k] = raw_by_text[text_key]
    else:
        for t in events:
            if "label_up" in t and (t["prompt_id"], t["style"]) in key_of:
                k = (t["prompt_id"], t["style"])
                raw_net[k] += 1 if t["label_up"] else -1
        honest_net = rating_net
    agg = _aggregate(pairs, unpaired)
    judged = [k for k, v in honest_net.items() if v]

    def agreement(label_of) -> float | None:
        # a missing or tied label counts as a coin flip: curation that drops everything earns no credit
        total = 0.0
        for k in judged:
            v = label_of(k)
            total += 0.5 if v == 0 else float((v > 0) == (honest_net[k] > 0))
        return round(total / len(judged), 4) if judged else None

    raw_agree = agreement(lambda k: raw_net.get(k, 0))
    cur_agree = agreement(lambda k: agg.get(key_of[k], 0.0))
    targets = {(t["prompt_id"], t["style"]) for t in world["brigade_targets"]}

    def flips(net: dict) -> list:
        out = []
        for k in sorted(targets):
            s = agg.get(key_of[k], 0.0)
            base = net[k] > 0 if net.get(k) else world_truth(world, k)
            if s != 0 and (s > 0) != base:
                out.append(k)
        return out

    flipped = flips(honest_net)
    return {
        "events": len(truth),
        "pairs": len(pairs),
        "unpaired": len(unpaired),
        "poison_events": len(poison),
        "trigger_backdoor_event_recall": _ratio(sum(t["event_id"] in dropped for t in poison), len(poison)),
        "surviving_poisoned_pairs": len(bad_pairs),
        "surviving_poisoned_unpaired": len(bad_unpaired),
        "surviving_poisoned_pair_share": _ratio(len(bad_pairs), len(pairs)),
        "bot_accounts_caught": caught("spam"),
        "brigade_targeted_items_flipped": _ratio(len(flipped), len(targets)),
        "brigade_targeted_items_flipped_vs_honest_ratings_only": _ratio(len(flips(rating_net)), len(targets)),
        "brigade_accounts_caught": caught("brigade"),
        "contrarians_caught": caught("contrarian"),
        "honest_events_dropped": _ratio(sum(t["event_id"] in dropped for t in honest), len(honest)),
        "honest_dropped_reasons": dict(sorted(why.items(), key=lambda kv: -kv[1])),
        "agreement_raw_majority": raw_agree,
        "agreement_curated": cur_agree,
        "agreement_gain_points": round(100 * (cur_agree - raw_agree), 2) if judged else None,
    }


def world_truth(world: dict, key: tuple) -> bool:
    for i in world["items"]:
        if (i["prompt_id"], i["style"]) == key:
            return i["truth_up"]
    return False


def acceptance(s: dict) -> dict[str, bool]:
    out = {"honest_events_dropped<=0.02": s["honest_events_dropped"] <= 0.02}
    if s["agreement_raw_majority"] is not None and s["agreement_raw_majority"] < 0.97:
        # votes were attacked: curation must beat the raw vote by 3 points
        out["agreement_gain>=3_points"] = s["agreement_gain_points"] >= 3.0
    elif s["agreement_raw_majority"] is not None:
        # no vote attack (the raw vote is already right): curation must not lose more than a point
        out["agreement_loss<=1_point"] = s["agreement_gain_points"] >= -1.0
    if s["poison_events"]:
        out["trigger_backdoor_event_recall>=0.99"] = s["trigger_backdoor_event_recall"] >= 0.99
        out["surviving_poisoned_pairs<=0.05%_and<=25"] = (s["surviving_poisoned_pair_share"] or 0) <= 0.0005 and s[
            "surviving_poisoned_pairs"
        ] <= 25
    if s["bot_accounts_caught"] is not None:
        out["bot_accounts_caught>=0.95"] = s["bot_accounts_caught"] >= 0.95
    if s["brigade_targeted_items_flipped"] is not None:
        out["brigade_items_flipped<=0.05"] = s["brigade_targeted_items_flipped"] <= 0.05
    if s["contrarians_caught"] is not None:
        out["contrarians_caught>=0.90"] = s["contrarians_caught"] >= 0.90
    return out


def run_variant(variant: str, seed: int, policy: Policy) -> dict:
    lines, truth, world = generate(variant, seed)
    t0 = time.monotonic()
    replay = run_replay(lines, policy)
    s = score(truth, world, replay.decisions, replay.pairs, replay.unpaired, lines)
    s["replay_seconds"] = round(time.monotonic() - t0, 1)
    s["acceptance"] = acceptance(s)
    return s


README = Path(__file__).resolve().parents[2] / "curation" / "README.md"
BEGIN, END = "<!-- bench:redteam:begin -->", "<!-- bench:redteam:end -->"
COLUMNS = [
    ("trigger_backdoor_event_recall", "poison event recall", "pct"),
    ("surviving_poisoned_pairs", "poisoned pairs left", "int"),
    ("bot_accounts_caught", "bots caught", "pct"),
    ("brigade_targeted_items_flipped", "brigaded items flipped", "pct"),
    ("contrarians_caught", "contrarians caught", "pct"),
    ("honest_events_dropped", "honest dropped", "pct"),
    ("agreement_gain_points", "agreement vs raw vote", "pts"),
]


def _cell(v, how: str) -> str:
    if v is None:
        return "-"
    return {"pct": f"{100 * v:.1f}%", "int": f"{v}", "pts": f"{v:+.1f} pts"}[how]


def readme_text(result: dict) -> str:
    """The README table: per variant, before (label `before`) -> after (label `current`)."""
    before, after = result.get("before", {}).get("variants", {}), result["current"]["variants"]
    lines = [
        "| variant | events | " + " | ".join(c[1] for c in COLUMNS) + " | replay s |",
        "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " | --- |",
    ]
    for v in VARIANTS:
        if v not in after:
            continue
        a, b = after[v], before.get(v, {})
        cells = []
        for key, _, how in COLUMNS:
            new = _cell(a.get(key), how)
            old = _cell(b.get(key), how) if b else None
            cells.append(new if old in (None, new) else f"{old} -> **{new}**")
        failed = [k for k, ok in a["acceptance"].items() if not ok]
        lines.append(
            f"| {v}{' (misses: ' + ', '.join(failed) + ')' if failed else ''} | {a['events']:,} | "
            + " | ".join(cells)
            + f" | {a['replay_seconds']:.0f} |"
        )
    run = result["current"]
    lines += [
        "",
        f"Seed {run['seed']}, load {run['machine_load_1m']} at the end, {run['generated_at'][:16]} UTC; "
        "`before` is the same generator through the code before evidence across windows.",
    ]
    return "\n".join(lines)


def write_readme(text: str) -> None:
    content = README.read_text()
    if BEGIN in content and END in content:
        head, rest = content.split(BEGIN, 1)
        README.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, default=Path("bench/results/curation_redteam.json"))
    ap.add_argument("--label", default="current", help="the key this run is stored under in the JSON")
    ap.add_argument("--readme-only", action="store_true", help="only rewrite curation/README.md's table")
    args = ap.parse_args()
    if args.readme_only:
        write_readme(readme_text(json.loads(args.out.read_text())))
        return
    result: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = result.setdefault(args.label, {})
    runs["generated_at"] = datetime.now(UTC).isoformat()
    runs["machine_load_1m"] = round(os.getloadavg()[0], 2)
    runs["seed"] = args.seed
    variants = runs.setdefault("variants", {})
    for v in args.variant:
        variants[v] = run_variant(v, args.seed, Policy())
        print(json.dumps({v: {k: x for k, x in variants[v].items() if k != "honest_dropped_reasons"}}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.label == "current":
        write_readme(readme_text(result))


if __name__ == "__main__":
    main()
