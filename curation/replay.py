"""The offline replay: a JSON-lines event file through the same decode and settle code as the stream."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from curation.decode import Accepted, DeadLetter, Rejected, decode_raw
from curation.errors import ReplayError
from curation.pipeline import Staging, WindowResult, apply_retractions, settle_all
from curation.reasons import Reason
from curation.settings import Policy


@dataclass
class ReplayResult:
    decisions: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    unpaired: list[dict] = field(default_factory=list)
    dlq: list[dict] = field(default_factory=list)
    windows: list[WindowResult] = field(default_factory=list)
    duplicate_ids: int = 0


def run_replay(lines: Iterable[bytes | str], policy: Policy, *, now: datetime | None = None,
               on_window=None) -> ReplayResult:
    """Decode every line, stage valid events (first event_id wins), settle every window, collect outputs."""
    out = ReplayResult()
    staging = Staging()
    rejected: dict[str, dict] = {}
    for n, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            raw = raw.rstrip(b"\r\n")
        else:
            raw = raw.rstrip("\r\n")
        if not raw:
            continue
        outcome = decode_raw(raw, now=now)
        if isinstance(outcome, DeadLetter):
            data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
            out.dlq.append({"line": n, "sha256": hashlib.sha256(data).hexdigest(), "reason": outcome.reason})
        elif isinstance(outcome, Rejected):
            if outcome.event_id in rejected or outcome.event_id in staging:
                out.duplicate_ids += 1
            else:
                rejected[outcome.event_id] = outcome.decision()
        elif isinstance(outcome, Accepted):
            if outcome.item.event_id in rejected or not staging.add(outcome.item):
                out.duplicate_ids += 1
    out.windows = settle_all(staging, policy, on_window)
    decisions = {eid: d for eid, d in rejected.items()}
    pairs, unpaired = [], []
    for w in out.windows:
        decisions.update({d["event_id"]: {"event_id": d["event_id"], "decision": d["decision"],
                                          "reasons": list(d["reasons"]), "user_id": d["user_id"]}
                          for d in w.decisions})
        pairs.extend(w.pairs)
        unpaired.extend(w.unpaired)
        # what the stream's store does when the window is saved: re-judged events leave with their pairs
        pairs, unpaired = apply_retractions(decisions, pairs, unpaired, w.retract, w.retract_accounts)
    out.pairs = [p.to_json() for p in pairs]
    out.unpaired = [u.to_json() for u in unpaired]
    out.decisions = sorted(({k: v for k, v in d.items() if k != "user_id"} for d in decisions.values()),
                           key=lambda d: d["event_id"])
    out.pairs.sort(key=lambda p: p["pair_id"])
    out.unpaired.sort(key=lambda u: u["example_id"])
    return out


def load_lines(path: Path) -> Iterable[bytes]:
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise ReplayError(f"`--input` must be a readable JSON-lines file; got {str(path)!r} ({exc.strerror})") from None
    with fh:
        yield from fh


def save_jsonl(path: Path | None, rows: Iterable[dict]) -> int:
    if path is None:
        return 0
    n = 0
    try:
        with open(path, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
                n += 1
    except OSError as exc:
        raise ReplayError(f"cannot write {str(path)!r}: {exc.strerror}") from None
    return n


def reason_counts(decisions: Iterable[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in decisions:
        for r in d["reasons"] or ["kept"]:
            counts[r] = counts.get(r, 0) + 1
    return dict(sorted(counts.items()))


__all__ = ["ReplayResult", "run_replay", "load_lines", "save_jsonl", "reason_counts", "Reason"]
