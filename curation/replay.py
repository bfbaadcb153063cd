"""The offline replay: a JSON-lines event file through the same decode and settle code as the stream."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from curation.decode import Accepted, DeadLetter, Rejected, decode_raw
from curation.errors import ReplayError
from curation.items import Key
from curation.pipeline import Staging, WindowResult, fold_windows, settle_all
from curation.reasons import Reason
from curation.settings import Policy
from curation.tokens import TokenCheck


@dataclass
class ReplayResult:
    decisions: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    unpaired: list[dict] = field(default_factory=list)
    dlq: list[dict] = field(default_factory=list)
    windows: list[WindowResult] = field(default_factory=list)
    duplicate_ids: int = 0


def run_replay(
    lines: Iterable[bytes | str],
    policy: Policy,
    *,
    now: datetime | None = None,
    on_window=None,
    pseudonym_key: bytes | None = None,
    tokens: TokenCheck | None = None,
) -> ReplayResult:
    """Decode every line, stage valid events (first (app_id, event_id) wins), settle every window, collect outputs.

    `now` stands for the broker's time of every line (a file has none): the contract's day-ahead window and
    `policy.max_future_skew_s` judge `occurred_at` against it, as the stream judges it against each record's
    broker time. Default: the current time, read once. `pseudonym_key` (default: the configured one) must be
    the stream's for the same pseudonyms; decisions do not depend on it. `tokens` (default: from the core
    settings, as the stream worker's) checks each event's feedback token.
    """
    if pseudonym_key is None:
        from curation.settings import default_pseudonym_key

        pseudonym_key = default_pseudonym_key()
    out = ReplayResult()
    tokens = tokens or TokenCheck.from_settings()
    staging = Staging()
    rejected: dict[Key, dict] = {}
    now = now or datetime.now(UTC)
    for n, raw in enumerate(lines, start=1):
        raw = raw.rstrip(b"\r\n") if isinstance(raw, bytes) else raw.rstrip("\r\n")
        if not raw:
            continue
        outcome = decode_raw(
            raw, now=now, max_future_s=policy.max_future_skew_s, pseudonym_key=pseudonym_key, tokens=tokens
        )
        if isinstance(outcome, DeadLetter):
            data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
            out.dlq.append({"line": n, "sha256": hashlib.sha256(data).hexdigest(), "reason": outcome.reason})
        elif isinstance(outcome, Rejected):
            if outcome.key in rejected or outcome.key in staging:
                out.duplicate_ids += 1
            else:
                rejected[outcome.key] = outcome.decision()
        elif isinstance(outcome, Accepted) and (outcome.item.key in rejected or not staging.add(outcome.item)):
            out.duplicate_ids += 1
    out.windows = settle_all(staging, policy, on_window)
    decisions: dict[Key, dict] = {(app, eid): d for (app, eid), d in rejected.items()}
    # what the stream's store does as windows are saved: re-judged events leave with their pairs
    pairs, unpaired = fold_windows(out.windows, decisions)
    out.pairs = [p.to_json() for p in pairs]
    out.unpaired = [u.to_json() for u in unpaired]
    out.decisions = [
        {k: decisions[key][k] for k in ("event_id", "decision", "reasons")}
        for key in sorted(decisions, key=lambda k: (k[1], k[0]))
    ]
    out.pairs.sort(key=lambda p: p["pair_id"])
    out.unpaired.sort(key=lambda u: u["example_id"])
    return out


def load_lines(path: Path) -> Iterable[bytes]:
    try:
        fh = open(path, "rb")  # noqa: SIM115 - opened apart to turn a bad path into ReplayError; closed by `with fh`
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


__all__ = ["Reason", "ReplayResult", "load_lines", "reason_counts", "run_replay", "save_jsonl"]
