"""The read API other packages use (retrain, flows): curated pairs, unpaired examples and feedback stats.

Functions take a SQLAlchemy Session (the caller opens it) and return plain dicts in TRL's
conversational format with lineage, or the small frozen records defined here. Times are datetimes
(naive = UTC) or ISO strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import overload

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from curation.evidence import upper_tail
from curation.reasons import TOKEN_VERIFIED
from curation.store import DecisionRow, EvidenceRow, PairRow, UnpairedRow, aware, naive, pair_json, unpaired_json


@overload
def _t(value: datetime | str) -> datetime: ...
@overload
def _t(value: datetime | str | None) -> datetime | None: ...
def _t(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return naive(value)


def load_pairs(
    session: Session,
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    include_retired: bool = False,
) -> list[dict]:
    """Live preference pairs with since <= created_at < until, oldest first: {prompt, chosen, rejected, weight,
    dimension, event_ids, created_at, pair_id}. `weight` is the pair's training weight (vote margin times the
    voters' reliability). A pair built from an event dropped later (re-judged, or by a recuration) is
    retired, and left out unless `include_retired` (then it carries `retired_at` and `retired_by`)."""
    q = select(PairRow).order_by(PairRow.created_at, PairRow.pair_id)
    if not include_retired:
        q = q.where(PairRow.retired_at.is_(None))
    if _t(since) is not None:
        q = q.where(PairRow.created_at >= _t(since))
    if _t(until) is not None:
        q = q.where(PairRow.created_at < _t(until))
    return [_with_retired(pair_json(r), r, include_retired) for r in session.scalars(q)]


def load_unpaired(
    session: Session,
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    include_retired: bool = False,
) -> list[dict]:
    """Live unpaired (KTO) examples: {prompt, completion, label, weight, dimension, event_ids, created_at,
    example_id}; retired ones as in `load_pairs`."""
    q = select(UnpairedRow).order_by(UnpairedRow.created_at, UnpairedRow.example_id)
    if not include_retired:
        q = q.where(UnpairedRow.retired_at.is_(None))
    if _t(since) is not None:
        q = q.where(UnpairedRow.created_at >= _t(since))
    if _t(until) is not None:
        q = q.where(UnpairedRow.created_at < _t(until))
    return [_with_retired(unpaired_json(r), r, include_retired) for r in session.scalars(q)]


def _with_retired(out: dict, row: PairRow | UnpairedRow, include: bool) -> dict:
    if include:
        out["retired_at"] = aware(row.retired_at).isoformat() if row.retired_at else None
        out["retired_by"] = row.retired_by
    return out


def count_pairs(session: Session, since: datetime | str | None = None) -> int:
    """Live pairs with created_at >= since."""
    q = select(func.count()).select_from(PairRow).where(PairRow.retired_at.is_(None))
    if _t(since) is not None:
        q = q.where(PairRow.created_at >= _t(since))
    return int(session.scalar(q) or 0)


def _empty_stats() -> dict:
    return {"ratings": 0, "up": 0, "down": 0, "edits": 0, "comparisons": 0, "events": 0}


def _tally(stats: dict, kind: str | None, rating: str | None, n: int = 1) -> None:
    stats["events"] += n
    if kind == "rating":
        stats["ratings"] += n
        if rating in ("up", "down"):
            stats[rating] += n
    elif kind == "edit":
        stats["edits"] += n
    elif kind == "comparison":
        stats["comparisons"] += n


def load_feedback_stats(
    session: Session, *, adapter_versions: list[str | None], since: datetime | str | None = None
) -> dict:
    """Per adapter version *as the client names it*, over KEPT events (keep or redact): ratings, up, down, edits,
    comparisons, events. For reports only: anyone with an app key can name any version, so a canary is judged
    by `load_verified_feedback_stats`."""
    out: dict = {}
    for version in adapter_versions:
        q = (
            select(DecisionRow.kind, DecisionRow.rating, func.count())
            .where(DecisionRow.decision != "drop")
            .group_by(DecisionRow.kind, DecisionRow.rating)
        )
        q = q.where(
            DecisionRow.adapter_version.is_(None) if version is None else DecisionRow.adapter_version == version
        )
        if _t(since) is not None:
            q = q.where(DecisionRow.occurred_at >= _t(since))
        stats = _empty_stats()
        for kind, rating, n in session.execute(q):
            _tally(stats, kind, rating, n)
        out[version] = stats
    return out


def load_verified_feedback_stats(
    session: Session,
    *,
    base_model: str,
    adapter_versions: list[str | None],
    since: datetime | str,
    until: datetime | str | None = None,
) -> dict:
    """Per serving version (None = the base model), the same counts as `load_feedback_stats`, over KEPT events
    whose feedback token verified for `base_model` and whose answer was served in [since, until).

    The version and the serving time are the ones the token signed, never the client's `adapter_version` or
    `occurred_at`, so two arms compared over one period saw the same users at the same time. One answer counts
    once (its first feedback by event time): a token copied onto many events is still one vote.
    """
    wanted = [v for v in adapter_versions if v is not None]
    arms = [DecisionRow.verified_version.in_(wanted)] if wanted else []
    if None in adapter_versions:
        arms.append(DecisionRow.verified_version.is_(None))
    out: dict = {v: _empty_stats() for v in adapter_versions}
    if not arms:
        return out
    # a token's serving time has whole seconds: an answer served in the second the period began belongs to it
    start = _t(since).replace(microsecond=0)
    q = (
        select(DecisionRow.verified_version, DecisionRow.response_id, DecisionRow.kind, DecisionRow.rating)
        .where(
            DecisionRow.decision != "drop",
            DecisionRow.token_status == TOKEN_VERIFIED,
            DecisionRow.verified_base_model == base_model,
            DecisionRow.served_at >= start,
            or_(*arms),
        )
        .order_by(DecisionRow.occurred_at, DecisionRow.event_id)
    )
    if _t(until) is not None:
        q = q.where(DecisionRow.served_at < _t(until))
    seen: set[str | None] = set()
    for version, response_id, kind, rating in session.execute(q):
        if response_id in seen:
            continue
        seen.add(response_id)
        _tally(out[version], kind, rating)
    return out


def load_decision(session: Session, event_id: str, app_id: str | None = None) -> dict | None:
    """The decision on `event_id` (of `app_id`; event ids are unique per app only)."""
    q = select(DecisionRow).where(DecisionRow.event_id == event_id)
    if app_id is not None:
        q = q.where(DecisionRow.app_id == app_id)
    row = session.scalars(q.order_by(DecisionRow.app_id)).first()
    if row is None:
        return None
    return {"event_id": row.event_id, "decision": row.decision, "reasons": json.loads(row.reasons)}


def count_decisions(session: Session) -> int:
    """How many events have a decision (kept, redacted or dropped): the demo waits on this."""
    return session.scalar(select(func.count()).select_from(DecisionRow)) or 0


def load_decisions(session: Session) -> list[dict]:
    """Every decision as {event_id, decision, reasons}, ordered by event_id (the audit contract)."""
    from curation.store import load_decisions as _load

    return _load(session)


def load_decision_history(session: Session, event_id: str, app_id: str | None = None) -> list[dict]:
    """The decisions a recuration superseded for `event_id`, oldest first, each with the policy hash that made
    it and the recuration that superseded it (the current decision: `load_decision`)."""
    from curation.store import load_decision_history as _load

    return _load(session, event_id, app_id)


def reason_counts(session: Session) -> dict[str, int]:
    """Decisions per reason code ("kept" for a decision without reasons)."""
    from curation.replay import reason_counts as _count

    return _count(load_decisions(session))


@dataclass(frozen=True)
class SuspectedTrigger:
    """A phrase appended to known prompts whose uses went against the crowd: a trigger curation judged (and
    dropped the events of), or one it suspects on too little evidence to drop anything yet."""

    phrase: str  # canonical form (lower case, confusables folded), as curation compares prompts
    dropped: bool  # judged a trigger: its events were dropped
    bad_accounts: int  # distinct accounts whose uses went against the crowd
    uses: int  # edits and comparisons that appended it
    p_value: float  # how unlikely that many moves against the crowd are for those prompts without it


def load_suspected_triggers(session: Session, *, min_accounts: int = 2, limit: int = 16) -> list[SuspectedTrigger]:
    """Every phrase curation judged a trigger, then the suspected ones (at least `min_accounts` accounts moved
    against the crowd with it, not yet significant), most suspicious first; at most `limit` in all."""
    rows = session.execute(
        select(EvidenceRow.section, EvidenceRow.key, EvidenceRow.value).where(
            or_(EvidenceRow.section == "phrases", (EvidenceRow.section == "flags") & (EvidenceRow.key == "triggers"))
        )
    )
    judged: dict = {}
    phrases: dict[str, dict] = {}
    for section, key, value in rows:
        if section == "flags":
            judged = json.loads(value) or {}
        else:
            phrases[key] = json.loads(value)
    out = []
    for phrase, record in phrases.items():
        uses = record.get("uses") or []
        bad = {u for u, _e, b, _r in uses if b}
        if phrase not in judged and len(bad) < min_accounts:
            continue
        at_stake = [(b, r) for _u, _e, b, r in uses if r >= 0]
        p = upper_tail(sum(b for b, _ in at_stake), [r for _, r in at_stake]) if at_stake else 1.0
        out.append(
            SuspectedTrigger(phrase=phrase, dropped=phrase in judged, bad_accounts=len(bad), uses=len(uses), p_value=p)
        )
    out += [
        SuspectedTrigger(phrase=p, dropped=True, bad_accounts=0, uses=0, p_value=0.0)
        for p in sorted(set(judged) - set(phrases))
    ]
    out.sort(key=lambda s: (not s.dropped, s.p_value, -s.bad_accounts, s.phrase))
    return out[:limit]
