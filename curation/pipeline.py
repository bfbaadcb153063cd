"""The pure entry point the stream worker and the offline replay both call: decode, then settle windows.

How state is held so both paths agree: every valid event is redacted and *staged* (keyed by app_id and
event_id, the first copy wins), in the store for the stream and in memory for the replay. Decisions are made per
event-time window [start, start+window) by `settle_window`, a pure function of the staged events in
[start-lookback, start+window+lookahead). The stream settles a window once the low watermark (the minimum
over partitions of the newest event time consumed) passed its end plus the lookahead; the replay settles
every window at end of input. Both therefore see the same context and make the same decisions. An event
that reaches the stream after its window was settled is decided `late_event` (the replay has none).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from curation.agreement import krippendorff_alpha
from curation.evidence import Changes, Evidence, advance
from curation.guards import (
    PoisonReport,
    RateReport,
    Reliability,
    event_flags,
    find_brigades,
    find_duplicates,
    find_poison,
    find_rate_abuse,
    find_unreliable,
    vote_of,
)
from curation.items import Item, Key
from curation.pairs import Pair, Unpaired, build_pairs
from curation.reasons import Reason, decide
from curation.settings import Policy, policy_hash

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def window_start(t: datetime, policy: Policy) -> datetime:
    """The start of the settle window holding event time `t` (windows are aligned on the epoch)."""
    secs = int((t - EPOCH).total_seconds() // policy.window_s) * policy.window_s
    return EPOCH + timedelta(seconds=secs)


def context_bounds(start: datetime, policy: Policy) -> tuple[datetime, datetime]:
    """[lo, hi): the event times a window's guards look at."""
    return (
        start - timedelta(seconds=policy.lookback_s),
        start + timedelta(seconds=policy.window_s + policy.lookahead_s),
    )


def ready_at(start: datetime, policy: Policy) -> datetime:
    """The watermark a window waits for before it is settled."""
    return context_bounds(start, policy)[1]


@dataclass
class WindowResult:
    start: datetime
    decisions: list[dict]
    pairs: list[Pair]
    unpaired: list[Unpaired]
    signals: dict = field(default_factory=dict)
    # with evidence across windows: earlier events re-judged (event_id -> reason), the new evidence, its changes
    retract: dict[str, str] = field(default_factory=dict)
    retract_accounts: dict[str, str] = field(default_factory=dict)  # user -> reason: all their earlier events
    evidence: Evidence | None = None
    changes: Changes | None = None
    policy_hash: str | None = None  # the content hash of the policy that settled the window


def decision_row(item: Item, reasons: list[str], start: datetime | None, policy: str | None = None) -> dict:
    """A decision with the fields the read API needs: canary-watch counts verified feedback by the version
    and serving time its token signed (`adapter_version` is the client's claim, kept for reports), and the
    hash of the policy that made it (`policy`)."""
    token = item.token
    verified = token if token is not None and token.verified else None
    return {
        "event_id": item.event_id,
        "decision": str(decide(reasons)),
        "reasons": reasons,
        "kind": item.kind,
        "app_id": item.app_id,
        "user_id": item.user_id,
        "adapter_version": item.adapter_version,
        "rating": item.rating,
        "occurred_at": item.occurred_at,
        "window_start": start,
        "token_status": token.status if token else None,
        "verified_version": verified.version if verified else None,
        "verified_base_model": verified.base_model if verified else None,
        "served_at": verified.served_at if verified else None,
        "response_id": verified.response_id if verified else None,
        "policy_hash": policy,
    }


def settle_window(
    context: Iterable[Item], start: datetime, policy: Policy, evidence: Evidence | None = None
) -> WindowResult:
    """Decide every event of the window [start, start+window) from its context; build pairs from the kept ones.

    With `evidence` (what earlier windows left), accounts and phrases are also judged over their whole
    history: the result carries the new evidence and the earlier events it re-judges (`retract`).
    """
    items = _in_context(context, start, policy)
    reasons, found = _judge_context(items, policy, evidence)
    end = start + timedelta(seconds=policy.window_s)
    target = [it for it in items if start <= it.occurred_at < end]
    verdict, new_evidence, changes, accuracy = None, None, None, {}
    if evidence is not None:
        verdict, new_evidence, changes = advance(evidence, target, policy, mark=start.isoformat())
        accuracy = verdict.accuracy
        for it in target:
            reasons[it.key].extend(r for r in verdict.reasons_for(it) if r not in reasons[it.key])
    phash = policy_hash(policy)
    decisions = [decision_row(it, reasons[it.key] + [str(r) for r in it.pii], start, phash) for it in target]
    kept = [it for it in target if not reasons[it.key]]
    # the long-run reliability where an account has a history, this context's estimate otherwise
    rel = found.reliability
    pairs, unpaired = build_pairs(kept, lambda u: accuracy.get(u, rel.weight(u, policy.reliability_prior)), policy)
    signals = _signals(found, target, kept)
    if verdict is None:
        return WindowResult(start, decisions, pairs, unpaired, signals, policy_hash=phash)
    signals["memory"] = {
        "accounts_flagged": len(verdict.accounts),
        "triggers": sorted(verdict.triggers),
        "payloads": sorted(verdict.payloads),
        "retracted": len(verdict.retract),
        "new_accounts": verdict.new_accounts,
        "new_account_wave": verdict.wave,
    }
    return WindowResult(
        start,
        decisions,
        pairs,
        unpaired,
        signals,
        verdict.retract,
        verdict.retract_accounts,
        new_evidence,
        changes,
        phash,
    )


def _in_context(context: Iterable[Item], start: datetime, policy: Policy) -> list[Item]:
    """The window's context: one copy per (app_id, event_id), in event-time order, inside its bounds."""
    items = sorted({it.key: it for it in context}.values(), key=lambda i: i.sort_key)
    lo, hi = context_bounds(start, policy)
    return [it for it in items if lo <= it.occurred_at < hi]


@dataclass
class _Found:
    """What the context's guards found besides reasons: the reports the window's signals are made of."""

    rate: RateReport
    poison: PoisonReport
    brigades: list[list[str]]
    reliability: Reliability


def _judge_context(items: list[Item], policy: Policy, evidence: Evidence | None) -> tuple[dict[Key, list[str]], _Found]:
    """The guards over the context, in order, each seeing only the events no earlier guard dropped."""
    reasons: dict[Key, list[str]] = {it.key: [] for it in items}

    def apply(found: dict[Key, Reason]) -> None:
        for eid, r in found.items():
            reasons[eid].append(str(r))

    def alive() -> list[Item]:
        return [it for it in items if not reasons[it.key]]

    # accounts judged adversarial before this window stay out of every statistic of its context
    flagged = (evidence.get("flags", "accounts") or {}) if evidence is not None else {}
    for it in items:
        if it.user_id in flagged:
            reasons[it.key].append(flagged[it.user_id])
    # rate sees every event an account sent (duplicates too: a bot re-sending is still sending)
    rate, rate_report = find_rate_abuse(items, policy)
    dups = find_duplicates(items, policy)
    apply(rate)
    apply({eid: r for eid, r in dups.items() if eid not in rate})
    for it in alive():
        reasons[it.key].extend(str(r) for r in event_flags(it, policy))
    poison, poison_report = find_poison(alive(), policy)
    apply(poison)
    brigade, brigades = find_brigades(alive(), policy)
    apply(brigade)
    unreliable, rel = find_unreliable(alive(), policy)
    apply(unreliable)
    return reasons, _Found(rate_report, poison_report, brigades, rel)


def _signals(found: _Found, target: list[Item], kept: list[Item]) -> dict:
    """What the window tells an operator: the guards' findings about its accounts, and the kept votes' agreement."""
    in_window = {it.user_id for it in target}
    votes: dict[str, list[str]] = {}
    up_rate: dict[str, list[int]] = {}
    for it in kept:
        v = vote_of(it)
        if v:
            votes.setdefault(v[0], []).append(v[1])
        if it.kind == "rating":
            c = up_rate.setdefault(it.app_id, [0, 0])
            c[0] += it.rating == "up"
            c[1] += 1
    rate = found.rate
    return {
        "triggers": found.poison.triggers,
        "payloads": found.poison.payloads,
        "brigades": [g for g in found.brigades if set(g) & in_window],
        "burst_users": sorted(rate.burst_users & in_window),
        "regular_users": sorted(rate.regular_users & in_window),
        "burst_sources": sorted(rate.burst_sources),
        "app_peak_per_min": rate.app_peak_per_min,
        "alpha": krippendorff_alpha(votes.values()),
        "up_rate": dict(sorted(up_rate.items())),
        "reliability": {u: round(a, 4) for u, a in sorted(found.reliability.accuracy.items()) if u in in_window},
    }


def apply_retractions(
    decisions: dict[Key, dict],
    pairs: list,
    unpaired: list,
    retract: dict[str, str],
    retract_accounts: dict[str, str] | None = None,
) -> tuple[list, list]:
    """Earlier events re-judged: a kept decision becomes a drop with the new reason, and the pairs and
    unpaired examples built from those events leave (`decisions`, by (app_id, event_id), is updated in place;
    they carry `user_id`). Events named one by one first (by event id, in every app, as the store does), then
    every event of the accounts named."""
    gone = set()
    named = [(k, retract[k[1]]) for k in sorted(decisions) if k[1] in retract]
    if retract_accounts:
        named += [
            (k, retract_accounts[d["user_id"]])
            for k, d in sorted(decisions.items())
            if d.get("user_id") in retract_accounts
        ]
    for k, reason in named:
        d = decisions[k]
        if d["decision"] != "drop":
            d["decision"], d["reasons"] = "drop", [*d["reasons"], reason]
            gone.add(k[1])
    if not gone:
        return pairs, unpaired
    keep = lambda row: not gone.intersection(row.event_ids if hasattr(row, "event_ids") else row["event_ids"])  # noqa: E731
    return [p for p in pairs if keep(p)], [u for u in unpaired if keep(u)]


def fold_windows(windows: Iterable[WindowResult], decisions: dict[Key, dict]) -> tuple[list[Pair], list[Unpaired]]:
    """What the store holds after saving `windows` in order: their decisions merged into `decisions` (by
    (app_id, event_id), updated in place; earlier decisions may be there already), and their pairs and unpaired
    examples less those whose events a later window re-judged (`apply_retractions`)."""
    pairs: list[Pair] = []
    unpaired: list[Unpaired] = []
    for w in windows:
        decisions.update({(d["app_id"], d["event_id"]): {**d, "reasons": list(d["reasons"])} for d in w.decisions})
        pairs.extend(w.pairs)
        unpaired.extend(w.unpaired)
        pairs, unpaired = apply_retractions(decisions, pairs, unpaired, w.retract, w.retract_accounts)
    return pairs, unpaired


def windows_of(items: Iterable[Item], policy: Policy) -> list[datetime]:
    return sorted({window_start(it.occurred_at, policy) for it in items})


class Staging:
    """Staged items in event-time order with a first-copy-wins (app_id, event_id) set: the replay's state."""

    def __init__(self) -> None:
        self._by_id: dict[Key, Item] = {}
        self._keys: list[tuple[datetime, str, str]] = []
        self._sorted: list[Item] = []

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, key: Key) -> bool:
        return key in self._by_id

    def add(self, item: Item) -> bool:
        """Stage `item`; False when its app staged its event_id before (a replay or redelivery)."""
        if item.key in self._by_id:
            return False
        self._by_id[item.key] = item
        i = bisect.bisect(self._keys, item.sort_key)
        self._keys.insert(i, item.sort_key)
        self._sorted.insert(i, item)
        return True

    def between(self, lo: datetime, hi: datetime) -> list[Item]:
        a = bisect.bisect_left(self._keys, (lo, ""))
        b = bisect.bisect_left(self._keys, (hi, ""))
        return self._sorted[a:b]

    def items(self) -> list[Item]:
        return list(self._sorted)


def settle_all(
    staging: Staging, policy: Policy, on_window=None, evidence: Evidence | None = None
) -> list[WindowResult]:
    """Settle every window that holds a staged event, in event-time order (the replay's end of input),
    carrying the evidence from each window to the next."""
    out = []
    starts = windows_of(staging.items(), policy)
    evidence = evidence if evidence is not None else Evidence()
    for i, start in enumerate(starts):
        lo, hi = context_bounds(start, policy)
        result = settle_window(staging.between(lo, hi), start, policy, evidence)
        evidence = result.evidence
        out.append(result)
        if on_window:
            on_window(i + 1, len(starts))
    return out
