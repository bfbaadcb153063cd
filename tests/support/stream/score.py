"""Score curation outputs (decisions, pairs, unpaired, dlq JSON lines) against the generator's ground truth.

    python -m tests.support.stream.score --stream /tmp/stream --outputs /tmp/out [--json]

Prints the acceptance numbers of issue 4 and whether each holds.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from curation.pii import find_pii

DUP_REASONS = {"duplicate_content", "near_duplicate"}


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _texts(row: dict) -> list[str]:
    out = [m["content"] for m in row.get("prompt", [])]
    for k in ("chosen", "rejected", "completion"):
        out += [m["content"] for m in row.get(k, [])]
    return out


def score(
    truth: list[dict],
    world: dict,
    decisions: list[dict],
    pairs: list[dict],
    unpaired: list[dict],
    dlq: list[dict],
    stored_texts: list[str] | None = None,
) -> dict:
    by_id = {}
    for d in decisions:
        by_id.setdefault(d["event_id"], []).append(d)
    dropped = {eid for eid, ds in by_id.items() if ds[0]["decision"] == "drop"}

    def events_of(cls: str) -> list[dict]:
        return [t for t in truth if t["class"] == cls]

    poison = events_of("poison")
    poison_ids = {t["event_id"] for t in poison}
    pairs_with_poison = [p for p in pairs if set(p["event_ids"]) & poison_ids]
    # spam accounts: caught when at least 90% of their events are dropped
    per_account: dict[str, list[bool]] = defaultdict(list)
    for t in events_of("spam"):
        per_account[t["user_id"]].append(t["event_id"] in dropped)
    caught = [u for u, flags in per_account.items() if sum(flags) >= 0.9 * len(flags)]
    # brigaded items: the aggregated label over stored pairs and unpaired examples, against the truth
    pid_text = {(i["prompt_id"], i["style"]): i for i in world["items"]}
    agg: dict[tuple, float] = defaultdict(float)
    for p in pairs:
        prompt = p["prompt"][-1]["content"]
        agg[(prompt, p["chosen"][0]["content"])] += p["weight"]
        agg[(prompt, p["rejected"][0]["content"])] -= p["weight"]
    for u in unpaired:
        prompt = u["prompt"][-1]["content"]
        agg[(prompt, u["completion"][0]["content"])] += u["weight"] if u["label"] else -u["weight"]
    targets = {(t["prompt_id"], t["style"]) for t in world["brigade_targets"]}
    # the label the item would have without the attack: its honest ratings (the truth when it has none)
    honest_sign: dict[tuple, int] = defaultdict(int)
    for t in truth:
        if t["class"] == "honest" and "label_up" in t:
            honest_sign[(t["prompt_id"], t["style"])] += 1 if t["label_up"] else -1
    flipped = []
    for key in sorted(targets):
        it = pid_text[key]
        s = agg.get((it["prompt"], it["text"]), 0.0)
        base = honest_sign.get(key, 0) > 0 if honest_sign.get(key, 0) else it["truth_up"]
        if s != 0 and (s > 0) != base:
            flipped.append(key)
    # duplicates, replays, malformed
    dups = events_of("duplicate") + events_of("near_duplicate")
    dup_caught = [t for t in dups if set(by_id.get(t["event_id"], [{}])[0].get("reasons", [])) & DUP_REASONS]
    replays = events_of("replay")
    replay_ok = [t for t in replays if len(by_id.get(t["event_id"], [])) == 1]
    dlq_lines = {d["line"] for d in dlq}
    malformed = events_of("malformed") + events_of("oversized")
    mal_ok = [t for t in malformed if (t["line"] in dlq_lines if t.get("dlq") else t["event_id"] in dropped)]
    # PII: nothing regex-detectable, and no PII string the generator planted, in any stored text
    texts = [x for r in pairs + unpaired for x in _texts(r)] + list(stored_texts or [])
    planted = [t["pii"] for t in truth if t.get("pii")]
    blob = "\n".join(texts)
    pii_left = sum(1 for x in texts if find_pii(x)) + sum(1 for p in planted if p in blob)
    # honest events dropped, and why
    honest = events_of("honest")
    honest_dropped = [t for t in honest if t["event_id"] in dropped]
    why = Counter(r for t in honest_dropped for r in by_id[t["event_id"]][0]["reasons"])
    trivial = events_of("trivial")
    flippers = events_of("flipper")
    result = {
        "events": len(truth),
        "decisions": len(decisions),
        "pairs": len(pairs),
        "unpaired": len(unpaired),
        "trigger_poison_recall": _ratio(sum(t["event_id"] in dropped for t in poison), len(poison)),
        "surviving_poison_pair_share": _ratio(len(pairs_with_poison), len(pairs)),
        "spam_account_recall": _ratio(len(caught), len(per_account)),
        "brigaded_items_flipped": _ratio(len(flipped), len(targets)),
        "duplicates_caught": _ratio(len(dup_caught), len(dups)),
        "replays_single_decision": _ratio(len(replay_ok), len(replays)),
        "malformed_handled": _ratio(len(mal_ok), len(malformed)),
        "pii_left": pii_left,
        "honest_dropped": _ratio(len(honest_dropped), len(honest)),
        "honest_dropped_reasons": dict(why.most_common()),
        "trivial_edits_dropped": _ratio(sum(t["event_id"] in dropped for t in trivial), len(trivial)),
        "flipper_events_dropped": _ratio(sum(t["event_id"] in dropped for t in flippers), len(flippers)),
    }
    result["acceptance"] = {
        "trigger_poison_recall>=0.99": result["trigger_poison_recall"] >= 0.99,
        "surviving_poison_pairs<=0.0005": result["surviving_poison_pair_share"] <= 0.0005,
        "spam_account_recall>=0.98": result["spam_account_recall"] >= 0.98,
        "brigaded_items_flipped<=0.05": result["brigaded_items_flipped"] <= 0.05,
        "duplicates_replays_malformed==1": min(
            result["duplicates_caught"], result["replays_single_decision"], result["malformed_handled"]
        )
        == 1.0,
        "pii_left==0": pii_left == 0,
        "honest_dropped<=0.02": result["honest_dropped"] <= 0.02,
    }
    return result


def _ratio(a: int, b: int) -> float:
    return round(a / b, 6) if b else 1.0


def score_dir(stream: Path, outputs: Path, stored_texts: list[str] | None = None) -> dict:
    truth = _jsonl(stream / "truth.jsonl")
    world = json.loads((stream / "world.json").read_text())
    return score(
        truth,
        world,
        _jsonl(outputs / "decisions.jsonl"),
        _jsonl(outputs / "pairs.jsonl"),
        _jsonl(outputs / "unpaired.jsonl"),
        _jsonl(outputs / "dlq.jsonl"),
        stored_texts,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stream", type=Path, required=True, help="the generator's output folder")
    ap.add_argument("--outputs", type=Path, required=True, help="folder with decisions/pairs/unpaired/dlq .jsonl")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = score_dir(args.stream, args.outputs)
    print(json.dumps(result, indent=None if args.json else 2))
    raise SystemExit(0 if all(result["acceptance"].values()) else 1)


if __name__ == "__main__":
    main()
