"""Dataset snapshots: curated records in, a deterministic, content-hashed train/held-out split out.

`build_snapshot` is pure. The edges: `load_snapshot_inputs` (the store, through curation's query API),
`load_records_jsonl` (curation's replay/export files), `save_snapshot` / `load_snapshot` (JSON lines in TRL's
formats plus `snapshot.json`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, overload

from pydantic import BaseModel, ConfigDict, Field

from retrain.errors import NotEnoughDataError, SnapshotError

SNAPSHOT_FILES = ("train.jsonl", "heldout.jsonl", "safety.jsonl", "unpaired_train.jsonl", "unpaired_heldout.jsonl")


class SnapshotPolicy(BaseModel):
    """What goes into a snapshot. Field names are those of the `snapshot:` block of a run config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    heldout_fraction: float = Field(default=0.15, ge=0.0, lt=1.0)
    split_salt: str = "alignloop"
    max_per_prompt: int = Field(default=8, ge=1)
    max_per_cluster: int = Field(default=64, ge=1)
    cluster_threshold: float = Field(default=0.8, gt=0.0, le=1.0, description="MinHash Jaccard of near-identical")
    min_weight: float = Field(default=0.0, ge=0.0)
    min_train_pairs: int = Field(default=16, ge=0)
    min_heldout_pairs: int = Field(default=4, ge=0)
    min_train_unpaired: int = Field(default=0, ge=0)
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class Snapshot:
    """A split of curated records; `hash` names its content and its policy."""

    train_pairs: list[dict]
    heldout_pairs: list[dict]
    safety_pairs: list[dict]
    train_unpaired: list[dict]
    heldout_unpaired: list[dict]
    hash: str
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def event_ids(self) -> list[str]:
        ids: set[str] = set()
        for part in (
            self.train_pairs,
            self.heldout_pairs,
            self.safety_pairs,
            self.train_unpaired,
            self.heldout_unpaired,
        ):
            for r in part:
                ids.update(r.get("event_ids") or [])
        return sorted(ids)

    @property
    def train_event_ids(self) -> list[str]:
        return sorted({e for r in self.train_pairs + self.train_unpaired for e in (r.get("event_ids") or [])})


# ---------------------------------------------------------------- pure core
def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def prompt_text(prompt: Any) -> str:
    """The user-visible text of a TRL prompt (a string or a list of messages)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def normalize_prompt(prompt: Any) -> str:
    """Lower case, digits as 0, punctuation and repeated spaces gone: near-identical prompts meet here."""
    text = re.sub(r"\d+", "0", prompt_text(prompt).lower())
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def _as_messages(value: Any, field_name: str, index: int, role: str | None = None) -> list[dict]:
    if isinstance(value, str) and role is not None:
        return [{"role": role, "content": value}]
    if isinstance(value, str) and role is None:
        return [{"role": "user", "content": value}]
    if (
        not isinstance(value, list)
        or not value
        or not all(
            isinstance(m, dict)
            and isinstance(m.get("content"), str)
            and m.get("role") in {"system", "user", "assistant"}
            for m in value
        )
    ):
        raise SnapshotError(
            f"record {index}: `{field_name}` must be a non-empty list of {{role, content}} "
            f"messages; got {str(value)[:80]!r}"
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _when(record: dict, index: int) -> datetime | None:
    raw = record.get("created_at")
    if raw is None:
        return None
    try:
        when = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))
    except ValueError:
        raise SnapshotError(f"record {index}: `created_at` must be an ISO timestamp; got {raw!r}") from None
    return _utc(when)


@overload
def _utc(when: datetime) -> datetime: ...
@overload
def _utc(when: datetime | None) -> datetime | None: ...
def _utc(when: datetime | None) -> datetime | None:
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _clean_pair(r: dict, i: int) -> dict:
    if not isinstance(r, dict):
        raise SnapshotError(f"pair {i}: must be an object; got {type(r).__name__}")
    for key in ("prompt", "chosen", "rejected"):
        if key not in r:
            raise SnapshotError(f"pair {i}: `{key}` is required; got keys {sorted(r)}")
    out = {
        "prompt": _as_messages(r["prompt"], "prompt", i),
        "chosen": _as_messages(r["chosen"], "chosen", i, "assistant"),
        "rejected": _as_messages(r["rejected"], "rejected", i, "assistant"),
        "weight": float(r.get("weight", 1.0)),
        "dimension": r.get("dimension") or "helpfulness",
        "event_ids": sorted(str(e) for e in (r.get("event_ids") or [])),
        "created_at": str(r.get("created_at")) if r.get("created_at") is not None else None,
        "pair_id": r.get("pair_id"),
    }
    if out["dimension"] not in {"safety", "helpfulness"}:
        raise SnapshotError(f'pair {i}: `dimension` must be "safety" or "helpfulness"; got {out["dimension"]!r}')
    return out


def _clean_unpaired(r: dict, i: int) -> dict:
    if not isinstance(r, dict):
        raise SnapshotError(f"unpaired {i}: must be an object; got {type(r).__name__}")
    for key in ("prompt", "completion", "label"):
        if key not in r:
            raise SnapshotError(f"unpaired {i}: `{key}` is required; got keys {sorted(r)}")
    if not isinstance(r["label"], bool):
        raise SnapshotError(f"unpaired {i}: `label` must be true or false; got {r['label']!r}")
    return {
        "prompt": _as_messages(r["prompt"], "prompt", i),
        "completion": _as_messages(r["completion"], "completion", i, "assistant"),
        "label": r["label"],
        "weight": float(r.get("weight", 1.0)),
        "dimension": r.get("dimension") or "helpfulness",
        "event_ids": sorted(str(e) for e in (r.get("event_ids") or [])),
        "created_at": str(r.get("created_at")) if r.get("created_at") is not None else None,
    }


def _dedupe(records: list[dict], content_keys: tuple[str, ...]) -> tuple[list[dict], int]:
    """One record per content; lineage merged, the highest weight kept. Sorted by content hash."""
    merged: dict[str, dict] = {}
    for r in records:
        key = _sha(_canon({k: r[k] for k in content_keys}))
        if key in merged:
            m = merged[key]
            m["event_ids"] = sorted(set(m["event_ids"]) | set(r["event_ids"]))
            m["weight"] = max(m["weight"], r["weight"])
        else:
            merged[key] = {**r, "content_hash": key}
    dupes = len(records) - len(merged)
    return [merged[k] for k in sorted(merged)], dupes


def cluster_prompts(norm_prompts: list[str], threshold: float) -> dict[str, str]:
    """Map each normalized prompt to its cluster id: near-identical prompts (MinHash LSH) share one."""
    from datasketch import MinHash, MinHashLSH

    uniq = sorted(set(norm_prompts))
    parent = {p: p for p in uniq}

    def find(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    lsh = MinHashLSH(threshold=threshold, num_perm=64)
    for p in uniq:
        mh = MinHash(num_perm=64, seed=1)
        grams = {p[i : i + 4] for i in range(max(1, len(p) - 3))}
        for g in sorted(grams):
            mh.update(g.encode())
        for other in lsh.query(mh):
            a, b = find(p), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)  # the smaller text names the cluster: order-independent
        lsh.insert(p, mh)
    return {p: _sha(find(p))[:16] for p in uniq}


def _is_heldout(cluster_id: str, policy: SnapshotPolicy) -> bool:
    bucket = int(_sha(f"{policy.split_salt}:{cluster_id}")[:8], 16) / 0xFFFFFFFF
    return bucket < policy.heldout_fraction


def _cap(records: list[dict], key, cap: int) -> tuple[list[dict], int]:
    """At most `cap` per key, the heaviest first (ties by content hash); returns kept and dropped count."""
    counts: dict[str, int] = {}
    kept = []
    for r in sorted(records, key=lambda r: (-r["weight"], r["content_hash"])):
        k = key(r)
        if counts.get(k, 0) < cap:
            counts[k] = counts.get(k, 0) + 1
            kept.append(r)
    kept.sort(key=lambda r: r["content_hash"])
    return kept, len(records) - len(kept)


def build_snapshot(pairs: list[dict], unpaired: list[dict], policy: SnapshotPolicy | dict | None = None) -> Snapshot:
    """Filter, dedupe, cap and split curated records; the same input and policy give the same snapshot and hash."""
    policy = SnapshotPolicy.model_validate(policy or {})
    clean_pairs = [_clean_pair(r, i) for i, r in enumerate(pairs)]
    clean_unp = [_clean_unpaired(r, i) for i, r in enumerate(unpaired)]
    stats: dict[str, Any] = {"input_pairs": len(clean_pairs), "input_unpaired": len(clean_unp)}

    def keep(r: dict, i: int) -> bool:
        when = _when(r, i)
        if policy.since and when and when < _utc(policy.since):
            return False
        if policy.until and when and when >= _utc(policy.until):
            return False
        return r["weight"] > 0 and r["weight"] >= policy.min_weight

    clean_pairs = [r for i, r in enumerate(clean_pairs) if keep(r, i)]
    clean_unp = [r for i, r in enumerate(clean_unp) if keep(r, i)]
    stats["after_window_and_weight"] = {"pairs": len(clean_pairs), "unpaired": len(clean_unp)}
    clean_pairs = [r for r in clean_pairs if r["chosen"] != r["rejected"]]
    clean_pairs, dup_p = _dedupe(clean_pairs, ("prompt", "chosen", "rejected"))
    clean_unp, dup_u = _dedupe(clean_unp, ("prompt", "completion", "label"))
    stats["duplicates"] = {"pairs": dup_p, "unpaired": dup_u}

    norms = {id(r): normalize_prompt(r["prompt"]) for r in clean_pairs + clean_unp}
    clusters = cluster_prompts(list(norms.values()), policy.cluster_threshold)
    for r in clean_pairs + clean_unp:
        r["prompt_hash"] = _sha(_canon(r["prompt"]))[:16]
        r["cluster"] = clusters[norms[id(r)]]
    clean_pairs, cap_p1 = _cap(clean_pairs, lambda r: r["prompt_hash"], policy.max_per_prompt)
    clean_pairs, cap_p2 = _cap(clean_pairs, lambda r: r["cluster"], policy.max_per_cluster)
    clean_unp, cap_u1 = _cap(clean_unp, lambda r: r["prompt_hash"], policy.max_per_prompt)
    clean_unp, cap_u2 = _cap(clean_unp, lambda r: r["cluster"], policy.max_per_cluster)
    stats["capped"] = {"per_prompt": cap_p1 + cap_u1, "per_cluster": cap_p2 + cap_u2}
    stats["clusters"] = len({r["cluster"] for r in clean_pairs + clean_unp})

    u_train: list[dict]
    u_held: list[dict]
    train, heldout, safety, u_train, u_held = [], [], [], [], []
    for r in clean_pairs:
        held = _is_heldout(r["cluster"], policy)
        if held and r["dimension"] == "safety":
            safety.append(r)
        elif held:
            heldout.append(r)
        else:
            train.append(r)
    for r in clean_unp:
        (u_held if _is_heldout(r["cluster"], policy) else u_train).append(r)

    sizes = {
        "train_pairs": len(train),
        "heldout_pairs": len(heldout),
        "safety_pairs": len(safety),
        "train_unpaired": len(u_train),
        "heldout_unpaired": len(u_held),
    }
    stats["sizes"] = sizes
    if len(train) < policy.min_train_pairs:
        raise NotEnoughDataError(
            f"`min_train_pairs` is {policy.min_train_pairs}; the snapshot has {len(train)} "
            f"training pairs after filtering ({stats['input_pairs']} in, sizes {sizes})"
        )
    if len(heldout) < policy.min_heldout_pairs:
        raise NotEnoughDataError(
            f"`min_heldout_pairs` is {policy.min_heldout_pairs}; the snapshot has {len(heldout)} "
            f"held-out pairs (raise `heldout_fraction` or add data; sizes {sizes})"
        )
    if len(u_train) < policy.min_train_unpaired:
        raise NotEnoughDataError(
            f"`min_train_unpaired` is {policy.min_train_unpaired}; the snapshot has {len(u_train)}"
        )

    parts = (train, heldout, safety, u_train, u_held)
    content = _canon(
        {
            "policy": policy.model_dump(mode="json"),
            "parts": [[r["content_hash"] for r in part] for part in parts],
            "lineage": [[r["event_ids"] for r in part] for part in parts],
            "weights": [[r["weight"] for r in part] for part in parts],
        }
    )
    return Snapshot(train, heldout, safety, u_train, u_held, hash=_sha(content), stats=stats)


@dataclass(frozen=True)
class TurnSelection:
    """What one turn of the loop trains on: the records new since the last turn, plus a bounded replay."""

    pairs: list[dict]
    unpaired: list[dict]
    new_pairs: int
    new_unpaired: int
    replay_pairs: int
    replay_unpaired: int
    since: datetime | None
    until: datetime | None  # exclusive: the next turn starts here

    def as_dict(self) -> dict:
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "new_pairs": self.new_pairs,
            "new_unpaired": self.new_unpaired,
            "replay_pairs": self.replay_pairs,
            "replay_unpaired": self.replay_unpaired,
        }


def _split_turn(
    records: list[dict], since: datetime | None, replay_ids: set[str], replay_max: int
) -> tuple[list[dict], list[dict]]:
    new: list[dict] = []
    old: list[dict] = []
    for i, r in enumerate(records):
        when = _when(r, i)
        (new if since is None or when is None or when >= _utc(since) else old).append(r)
    # replay only what the serving adapter learned, newest first: it keeps that behaviour from being forgotten
    learned = [r for r in old if replay_ids.intersection(r.get("event_ids") or ())]
    learned.sort(key=lambda r: str(r.get("created_at") or ""), reverse=True)
    return new, learned[:replay_max]


def select_turn_records(
    pairs: list[dict],
    unpaired: list[dict],
    *,
    since: datetime | None,
    replay_ids: set[str] | frozenset[str],
    replay_max: int,
) -> TurnSelection:
    """New records (created at or after `since`; all when `since` is None) plus at most `replay_max` pairs and as
    many unpaired examples from before `since` that the serving adapter was trained on (`replay_ids`).

    `until` is just past the newest record's time: curation settles windows in event-time order, so every record
    older than that is already stored and the next turn loses nothing by starting there.
    """
    new_p, old_p = _split_turn(pairs, since, set(replay_ids), replay_max)
    new_u, old_u = _split_turn(unpaired, since, set(replay_ids), replay_max)
    times = [t for i, r in enumerate(new_p + new_u) if (t := _when(r, i)) is not None]
    until = _utc(max(times)) + timedelta(microseconds=1) if times else since
    return TurnSelection(
        pairs=old_p + new_p,
        unpaired=old_u + new_u,
        new_pairs=len(new_p),
        new_unpaired=len(new_u),
        replay_pairs=len(old_p),
        replay_unpaired=len(old_u),
        since=_utc(since),
        until=until,
    )


def to_trl_pairs(records: list[dict]) -> list[dict]:
    """Only the columns TRL's DPOTrainer reads."""
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in records]


def to_trl_unpaired(records: list[dict]) -> list[dict]:
    return [{"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]} for r in records]


# ---------------------------------------------------------------- I/O edges
def load_snapshot_inputs(
    session, since: datetime | None = None, until: datetime | None = None
) -> tuple[list[dict], list[dict]]:
    """(pairs, unpaired) from the store through curation's query API, for a time window."""
    try:
        from curation import query
    except ImportError as exc:
        raise SnapshotError(f"curation's query API (`curation.query`) is not available: {exc}") from exc
    return (query.load_pairs(session, since=since, until=until), query.load_unpaired(session, since=since, until=until))


def load_records_jsonl(path: Path | str | None) -> list[dict]:
    """Records from a JSON-lines file (curation's replay/export format); a bad line names its number."""
    if path is None:
        return []
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"input file must exist; got {str(path)!r}")
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SnapshotError(f"{path}:{n}: each line must be one JSON object; {exc.msg}") from None
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")


def save_snapshot(snapshot: Snapshot, out_dir: Path | str) -> Path:
    """JSON lines in TRL's formats (with weight and lineage) plus `snapshot.json`; atomic (temp dir, rename)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise SnapshotError(f"snapshot directory must not exist yet; got {str(out_dir)!r}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        parts = (
            snapshot.train_pairs,
            snapshot.heldout_pairs,
            snapshot.safety_pairs,
            snapshot.train_unpaired,
            snapshot.heldout_unpaired,
        )
        for name, rows in zip(SNAPSHOT_FILES, parts):
            _write_jsonl(tmp / name, rows)
        (tmp / "snapshot.json").write_text(json.dumps({"hash": snapshot.hash, "stats": snapshot.stats}, indent=2))
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_snapshot(path: Path | str) -> Snapshot:
    path = Path(path)
    meta_file = path / "snapshot.json"
    if not meta_file.is_file():
        raise SnapshotError(f"a snapshot directory must hold snapshot.json; got {str(path)!r}")
    meta = json.loads(meta_file.read_text())
    train, heldout, safety, u_train, u_held = (load_records_jsonl(path / name) for name in SNAPSHOT_FILES)
    return Snapshot(train, heldout, safety, u_train, u_held, hash=meta["hash"], stats=meta.get("stats", {}))
