"""Re-curation: stored events re-decided under a (new) policy; new decisions supersede old ones, and the pairs
and unpaired examples built from now-dropped events are retired.

`recurate(engine, policy, since)` is the edge (it reads and writes the store in one transaction); what it
decides comes from the same pure `settle_window` the worker and the replay call. Evidence across windows is
a fold over every window from the first, so it is rebuilt from the first staged event under the policy;
only windows from `since` on are re-decided (earlier windows are replayed for evidence alone, and their
decisions stay, unless a later window's re-judgement drops them, as it would in the stream).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine

from alignloop.core.db import session_scope
from curation import store
from curation.evidence import Evidence
from curation.items import Key
from curation.pipeline import (
    Staging,
    WindowResult,
    context_bounds,
    fold_windows,
    settle_window,
    window_start,
)
from curation.settings import Policy, policy_hash


@dataclass
class Recuration:
    """What one recuration changed (the summary stored with it in `curation_recurations`)."""

    recuration_id: str
    policy_hash: str
    since: datetime
    windows: int = 0
    decisions: int = 0
    changed: dict[str, int] = field(default_factory=dict)  # "keep->drop" etc.
    pairs_retired: int = 0
    unpaired_retired: int = 0
    pairs_live: int = 0
    unpaired_live: int = 0

    def summary(self) -> dict:
        return {
            "windows": self.windows,
            "decisions": self.decisions,
            "changed": dict(sorted(self.changed.items())),
            "pairs_retired": self.pairs_retired,
            "unpaired_retired": self.unpaired_retired,
            "pairs_live": self.pairs_live,
            "unpaired_live": self.unpaired_live,
        }


def resettle(staging: Staging, starts: list[datetime], policy: Policy) -> list[WindowResult]:
    """Settle `starts` in order from empty evidence, as the stream settled them (pure)."""
    out: list[WindowResult] = []
    evidence: Evidence | None = Evidence()
    for start in starts:
        lo, hi = context_bounds(start, policy)
        result = settle_window(staging.between(lo, hi), start, policy, evidence)
        evidence = result.evidence
        out.append(result)
    return out


def new_id(now: datetime) -> str:
    return f"r{now:%Y%m%dT%H%M%S}-{secrets.token_hex(6)}"


def recurate(engine: Engine, policy: Policy, since: datetime) -> Recuration:
    """Re-decide every stored event of the settled windows from `since`'s window on, under `policy`.

    The caller holds the settle lock (no worker settles meanwhile): `CurationEdge.recurate` does.
    """
    started = datetime.now(UTC)
    rec = Recuration(new_id(started), policy_hash(policy), window_start(since, policy))
    with session_scope(engine) as session:
        staging = Staging()
        for it in store.load_staged(session, datetime(1970, 1, 1), datetime(9999, 1, 1)):
            staging.add(it)
        starts = sorted(store.load_settled_windows(session))
        current = store.load_current_decisions(session)
    results = resettle(staging, starts, policy)
    redone = [w for w in results if w.start >= rec.since]
    rec.windows = len(redone)
    # earlier decisions as they stand, then the re-settled windows on top (their re-judgements may reach back)
    decisions: dict[Key, dict] = {k: dict(d) for k, d in current.items()}
    pairs, unpaired = fold_windows(redone, decisions)
    # re-settled events carry every field ("kind" among them); earlier ones only change when re-judged
    rows = [d for k, d in decisions.items() if "kind" in d or d["decision"] != current[k]["decision"]]
    for row in rows:
        old = current.get((row["app_id"], row["event_id"]))
        if old is not None and old["decision"] != row["decision"]:
            t = f"{old['decision']}->{row['decision']}"
            rec.changed[t] = rec.changed.get(t, 0) + 1
    rec.decisions = len(rows)
    resettled = [d for d in rows if "kind" in d]
    rejudged = [{**d, "policy_hash": rec.policy_hash} for d in rows if "kind" not in d]
    dropped = {k[1] for k, d in decisions.items() if d["decision"] == "drop"}
    live = ({p.pair_id for p in pairs}, {u.example_id for u in unpaired})
    with session_scope(engine) as session:
        store.save_policy(session, policy)
        for part in (resettled, rejudged):  # one statement each: their rows carry different fields
            store.supersede_decisions(session, part, rec.recuration_id)
        # events this policy drops that the last one kept go to `.rejected` too (a worker sends them)
        store.queue_rejected(
            session,
            [
                d
                for d in rows
                if d["decision"] == "drop"
                and current.get((d["app_id"], d["event_id"]), {"decision": "keep"})["decision"] != "drop"
            ],
            "recurated",
        )
        store.save_built(session, redone)
        rec.pairs_retired, rec.unpaired_retired = (
            _retire(session, model, rec, keep, dropped)
            for model, keep in ((store.PairRow, live[0]), (store.UnpairedRow, live[1]))
        )
        # a re-settled window's pair whose events a later window re-judged is not live either
        store.retire(session, store.PairRow, {p.pair_id for w in redone for p in w.pairs} - live[0], rec.recuration_id)
        store.retire(
            session, store.UnpairedRow, {u.example_id for w in redone for u in w.unpaired} - live[1], rec.recuration_id
        )
        store.update_windows(session, redone)
        if results:
            last = results[-1]
            assert last.evidence is not None  # resettle starts from evidence, so every window carries it
            store.replace_evidence(session, last.evidence, f"{last.start.isoformat()}#{rec.recuration_id}")
        rec.pairs_live, rec.unpaired_live = len(live[0]), len(live[1])
        store.save_recuration(
            session,
            {
                "recuration_id": rec.recuration_id,
                "started_at": store.naive(started),
                "finished_at": store.naive(datetime.now(UTC)),
                "since": store.naive(rec.since),
                "policy_hash": rec.policy_hash,
                "summary": rec.summary(),
            },
        )
    return rec


def _retire(session, model, rec: Recuration, live: set[str], dropped: set[str]) -> int:
    """Retire the rows from `since` on that the policy no longer builds, and any row holding a dropped event."""
    gone = {k for k, ids in store.live_ids(session, model, rec.since).items() if k not in live}
    n = store.retire(session, model, gone, rec.recuration_id)
    return n + store.retire_built_from(session, dropped, None, rec.recuration_id)
