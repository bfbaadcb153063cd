"""The cross-event guards: pure functions of a sorted context of Items and a Policy -> reasons per Item.key.

Every function here is deterministic in its input *set*: it sorts, iterates sorted keys and breaks ties by
(occurred_at, event_id, app_id), so the stream (events in arrival order) and the replay (file order) agree.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from datasketch import MinHash

from curation.items import Item, Key, _digest
from curation.reasons import Reason
from curation.settings import Policy
from curation.text import (
    inserted_spans,
    is_refusal,
    is_trivial_edit,
    ngrams,
    normalize,
    shingles,
    tokens,
    word_difference,
)

_NUM_PERM = 64
_CACHE_LIMIT = 200_000
_minhash_cache: dict[Key, MinHash] = {}


def _cached(cache: dict, key, make):
    value = cache.get(key)
    if value is None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        value = cache[key] = make()
    return value


# ------------------------------------------------------------------ per event
@dataclass(frozen=True)
class Features:
    """What the guards read from one event, computed once per event and policy (windows overlap)."""

    flags: tuple[Reason, ...]
    prompt_grams: frozenset[str]
    prompt_norm: str
    insert_grams: frozenset[str]
    bg_text: str
    pref_text: str


_feature_cache: dict[tuple[Key, int], Features] = {}


def features(item: Item, policy: Policy) -> Features:
    def make() -> Features:
        pref = preferred_text(item)
        return Features(
            tuple(_event_flags(item, policy)),
            frozenset(ngrams(tokens(item.last_user_turn))),
            " ".join(tokens(item.last_user_turn)),
            frozenset(_inserted_grams(item)) if item.kind == "edit" else frozenset(),
            _bg_text(item),
            " " + " ".join(tokens(pref)) + " " if pref is not None else "",
        )

    return _cached(_feature_cache, (item.key, hash(policy)), make)


def event_flags(item: Item, policy: Policy) -> list[Reason]:
    """Guards that need only the event itself: trivial edits, refusal -> compliance, unsafe preferred content."""
    return list(features(item, policy).flags)


def _event_flags(item: Item, policy: Policy) -> list[Reason]:
    out: list[Reason] = []
    if item.kind == "edit":
        if is_trivial_edit(item.response or "", item.edited or "", policy.trivial_edit_distance):
            out.append(Reason.TRIVIAL_EDIT)
        if is_refusal(item.response or "") and not is_refusal(item.edited or ""):
            out.append(Reason.REFUSAL_TO_COMPLIANCE)
    preferred = preferred_text(item)
    if preferred is not None and any(re.search(p, preferred, re.IGNORECASE) for p in policy.unsafe_patterns):
        out.append(Reason.UNSAFE_CONTENT)
    return out


def preferred_text(item: Item) -> str | None:
    """The text this event asks the model to produce more of (None when it asks for nothing)."""
    if item.kind == "edit":
        return item.edited
    if item.kind == "comparison" and item.chosen is not None and item.responses:
        return item.responses[item.chosen]
    if item.kind == "rating" and item.rating == "up":
        return item.response
    return None


# ------------------------------------------------------------------ duplicates
_TEMPLATE: MinHash | None = None
_pair_cache: dict[tuple[Key, Key], bool] = {}


def _xxh32(data: bytes) -> int:
    import xxhash

    return xxhash.xxh32_intdigest(data)


def _minhash(item: Item) -> MinHash:
    global _TEMPLATE
    if _TEMPLATE is None:
        _TEMPLATE = MinHash(num_perm=_NUM_PERM, seed=1, hashfunc=_xxh32)

    def make() -> MinHash:
        # the permutations are shared (seeded once); xxhash instead of sha1: the same sketch, much cheaper
        m = MinHash(
            num_perm=_NUM_PERM, seed=1, hashfunc=_xxh32, permutations=_TEMPLATE.permutations, scheme=_TEMPLATE.scheme
        )
        m.update_batch(sorted(shingles("\n".join(item.texts()))))
        return m

    return _cached(_minhash_cache, item.key, make)


def _near(a: Item, b: Item, policy: Policy) -> bool:
    """Whether b re-sends a: windows overlap, so each pair is judged once and remembered."""
    key = (a.key, b.key)
    hit = _pair_cache.get(key)
    if hit is None:
        hit = (
            _minhash(a).jaccard(_minhash(b)) >= policy.near_dup_jaccard
            and word_difference("\n".join(a.texts()), "\n".join(b.texts())) <= 2
        )
        if len(_pair_cache) >= 4 * _CACHE_LIMIT:
            _pair_cache.clear()
        _pair_cache[key] = hit
    return hit


def _judgement(item: Item) -> tuple:
    return (item.kind, item.rating, item.chosen)


def find_duplicates(items: Sequence[Item], policy: Policy) -> dict[Key, Reason]:
    """Same user, same judgement, the same texts re-sent under a new id: first kept.

    Exact: the content key. Near: MinHash Jaccard of character 5-gram shingles at least `near_dup_jaccard`
    *and* at most two words of difference, so that templated answers to different questions (another
    product name) stay apart while a re-send with a typo or punctuation changed is caught.
    """
    out: dict[Key, Reason] = {}
    seen: set[str] = set()
    groups: dict[tuple, list[Item]] = defaultdict(list)
    for item in items:
        key = item.content_key()
        if key in seen:
            out[item.key] = Reason.DUPLICATE_CONTENT
            continue
        seen.add(key)
        group = groups[(item.user_id, item.app_id, _judgement(item))]
        for other in group:
            if _near(other, item, policy):
                out[item.key] = Reason.NEAR_DUPLICATE
                break
        else:
            group.append(item)
    return out


# ------------------------------------------------------------------ rate and bots
def _max_per_minute(times: list[float]) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 60.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _burst_members(times: list[float], limit: int) -> list[bool]:
    """For each time, whether it lies in a 60 s window holding more than `limit` events."""
    inside = [False] * len(times)
    lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 60.0:
            lo += 1
        if hi - lo + 1 > limit:
            for k in range(lo, hi + 1):
                inside[k] = True
    return inside


def _crowded(group: list[Item], policy: Policy, span_of: dict[str, float]) -> set[str]:
    """Throwaway accounts (all activity within an hour) on one ip_hash/device, when more than
    `source_max_users` of them act within 10 minutes: a farm. Long-lived users behind a NAT never count."""
    out: set[str] = set()
    lo = 0
    active: dict[str, int] = defaultdict(int)
    group = [it for it in group if span_of[it.user_id] <= 3600.0]
    for _hi, it in enumerate(group):
        active[it.user_id] += 1
        while it.occurred_at.timestamp() - group[lo].occurred_at.timestamp() >= 600.0:
            u = group[lo].user_id
            active[u] -= 1
            if not active[u]:
                del active[u]
            lo += 1
        if len(active) > policy.source_max_users:
            out.update(active)
    return out


def _regular(times: list[float], policy: Policy) -> bool:
    if len(times) < policy.regular_min_events:
        return False
    # robust coefficient of variation (1.4826 MAD / median): a few dropped or doubled beats keep a metronome one
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    med = gaps[len(gaps) // 2]
    if med <= 0:
        return True
    dev = sorted(abs(g - med) for g in gaps)
    return 1.4826 * dev[len(dev) // 2] / med < policy.regular_max_cv


@dataclass
class RateReport:
    burst_users: set[str] = field(default_factory=set)
    regular_users: set[str] = field(default_factory=set)
    burst_sources: set[str] = field(default_factory=set)
    source_users: set[str] = field(default_factory=set)
    app_peak_per_min: dict[str, int] = field(default_factory=dict)


def find_rate_abuse(items: Sequence[Item], policy: Policy) -> tuple[dict[Key, Reason], RateReport]:
    """Bursts per user and per ip_hash/device (event time), metronome-regular accounts; per-app peaks as a signal."""
    report = RateReport()
    by_user: dict[str, list[Item]] = defaultdict(list)
    by_source: dict[str, list[Item]] = defaultdict(list)
    by_app: dict[str, list[float]] = defaultdict(list)
    for it in items:
        by_user[it.user_id].append(it)
        by_app[it.app_id].append(it.occurred_at.timestamp())
        if it.ip_hash:
            by_source["ip:" + it.ip_hash].append(it)
        if it.device_id:
            by_source["dev:" + it.device_id].append(it)
    span_of: dict[str, float] = {}
    for user in sorted(by_user):
        times = [it.occurred_at.timestamp() for it in by_user[user]]
        span_of[user] = times[-1] - times[0]
        if _max_per_minute(times) > policy.user_per_min:
            report.burst_users.add(user)
        elif _regular(times, policy):
            report.regular_users.add(user)
    for source in sorted(by_source):
        group = by_source[source]
        times = [it.occurred_at.timestamp() for it in group]
        inside = _burst_members(times, policy.source_per_min)
        crowd = _crowded(group, policy, span_of)
        if crowd:
            report.burst_sources.add(source)
            report.source_users.update(crowd)
        if any(inside):
            report.burst_sources.add(source)
            counts: dict[str, int] = defaultdict(int)
            for it, flag in zip(group, inside):
                if flag:
                    counts[it.user_id] += 1
            # an honest user behind the same NAT with an event or two in the burst is not a bot
            report.source_users.update(u for u, n in counts.items() if n >= 3)
    for app in sorted(by_app):
        report.app_peak_per_min[app] = _max_per_minute(by_app[app])
    out: dict[Key, Reason] = {}
    for it in items:
        if it.user_id in report.burst_users:
            out[it.key] = Reason.RATE_USER
        elif it.user_id in report.source_users:
            out[it.key] = Reason.RATE_SOURCE
        elif it.user_id in report.regular_users:
            out[it.key] = Reason.BOT_REGULAR
    return out, report


# ------------------------------------------------------------------ judgements (ratings, comparisons)
def vote_of(item: Item) -> tuple[str, str] | None:
    """(judged item key, label) for a rating or a decided comparison; None for edits and ties."""
    if item.kind == "rating" and item.response is not None:
        return _digest(item.prompt_key + "\x00" + item.response), item.rating or ""
    if item.kind == "comparison" and item.chosen is not None and item.responses:
        pair = sorted(item.responses)
        return _digest(item.prompt_key + "\x00" + pair[0] + "\x00" + pair[1]), _digest(item.responses[item.chosen])
    return None


def connected_groups(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The connected groups of the accounts that `edges` link (union-find), each sorted, ordered by their
    smallest member."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = defaultdict(list)
    for u in sorted(parent):
        groups[find(u)].append(u)
    return [g for _, g in sorted(groups.items())]


def find_brigades(items: Sequence[Item], policy: Policy) -> tuple[dict[Key, Reason], list[list[str]]]:
    """Co-action: accounts that vote the same way on the same items within a short window, as a group."""
    votes: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
    for it in items:
        v = vote_of(it)
        if v:
            votes[v].append((it.occurred_at.timestamp(), it.user_id))
    coaction: dict[tuple[str, str], set[str]] = defaultdict(set)
    for key in sorted(votes):
        seq = votes[key]
        seq.sort()
        for i, (t, u) in enumerate(seq):
            for t2, u2 in seq[i + 1 :]:
                if t2 - t > policy.coaction_window_s:
                    break
                if u2 != u:
                    coaction[(min(u, u2), max(u, u2))].add(key[0])
    linked = [(a, b) for (a, b) in sorted(coaction) if len(coaction[(a, b)]) >= policy.coaction_min_items]
    brigades = [g for g in connected_groups(linked) if len(g) >= policy.brigade_min_accounts]
    members = {u for g in brigades for u in g}
    out = {it.key: Reason.BRIGADE for it in items if it.user_id in members and vote_of(it)}
    return out, brigades


@dataclass
class Reliability:
    """One-coin Dawid-Skene: each user's probability of agreeing with the weighted consensus."""

    accuracy: dict[str, float]
    overlap: dict[str, int]
    consensus: dict[str, str]  # judged item key -> weighted majority label

    def weight(self, user: str, prior: float) -> float:
        return round(self.accuracy.get(user, prior), 6)


def _logit(p: float) -> float:
    p = min(max(p, 0.05), 0.95)
    return math.log(p / (1 - p))


def estimate_reliability(items: Sequence[Item], policy: Policy, iterations: int = 5) -> Reliability:
    """Alternate weighted-majority consensus (leave-one-out) and per-user agreement with a Beta prior."""
    by_key: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for it in items:
        v = vote_of(it)
        if v:
            by_key[v[0]].append((it.user_id, v[1]))
    keys = sorted(by_key)
    users = sorted({u for k in keys for u, _ in by_key[k]})
    acc = {u: policy.reliability_prior for u in users}
    overlap = {u: 0 for u in users}
    a0, k0 = policy.reliability_prior, policy.reliability_prior_strength
    for _ in range(iterations):
        agree = {u: 0.0 for u in users}
        seen = {u: 0 for u in users}
        for key in keys:
            votes = by_key[key]
            if len({u for u, _ in votes}) < 2:
                continue
            score: dict[str, float] = defaultdict(float)
            for u, label in votes:
                score[label] += _logit(acc[u])
            for u, label in votes:
                loo = dict(score)
                loo[label] -= _logit(acc[u])
                labels = sorted(loo, key=lambda lab: (-loo[lab], lab))
                best = labels[0]
                if len(labels) > 1 and abs(loo[labels[0]] - loo[labels[1]]) < 1e-9:
                    continue  # the others are split: no evidence about this user
                if loo[best] <= 0 and len(loo) == 1:
                    continue
                seen[u] += 1
                agree[u] += 1.0 if best == label else 0.0
        acc = {u: (agree[u] + a0 * k0) / (seen[u] + k0) for u in users}
        overlap = seen
    consensus = {}
    for key in keys:
        score = defaultdict(float)
        for u, label in by_key[key]:
            score[label] += _logit(acc[u])
        consensus[key] = sorted(score, key=lambda lab: (-score[lab], lab))[0]
    return Reliability(acc, overlap, consensus)


def find_unreliable(items: Sequence[Item], policy: Policy) -> tuple[dict[Key, Reason], Reliability]:
    rel = estimate_reliability(items, policy)
    bad = {
        u
        for u, a in rel.accuracy.items()
        if rel.overlap.get(u, 0) >= policy.reliability_min_overlap and a < policy.reliability_drop_below
    }
    return {it.key: Reason.UNRELIABLE_USER for it in items if it.user_id in bad and vote_of(it)}, rel


# ------------------------------------------------------------------ poisoned edits
def _bg_text(item: Item) -> str:
    """What the model and ordinary prompts say: responses, plus the prompt of a rating."""
    parts = [item.response or ""]
    if item.responses:
        parts.extend(item.responses)
    if item.kind == "rating":
        parts.append(item.last_user_turn)
    return " " + " ".join(tokens(" \n ".join(parts))) + " "


def _inserted_grams(item: Item) -> set[str]:
    out: set[str] = set()
    for span in inserted_spans(item.response or "", item.edited or ""):
        out |= ngrams(span)
    return out


@dataclass
class PoisonReport:
    triggers: list[str] = field(default_factory=list)
    payloads: list[str] = field(default_factory=list)


def _background_at_most(gram: str, items: Iterable[Item], limit: int, policy: Policy) -> bool:
    needle, count = f" {gram} ", 0
    for it in items:
        if needle in features(it, policy).bg_text:
            count += 1
            if count > limit:
                return False
    return True


def _tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (exact enough, and cheap for small n)."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq, ln = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    return min(
        1.0,
        sum(
            math.exp(ln - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq) for i in range(k, n + 1)
        ),
    )


@dataclass
class _PhraseCounts:
    """Who used which prompt n-gram in which channel, and which n-grams edits inserted: find_poison's tallies."""

    shaping_users: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    shaping_prompts: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    shaping_count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rating_count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    payload_uses: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    edits_of: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    n_shaping: int = 0

    @classmethod
    def of(cls, items: Sequence[Item], policy: Policy) -> _PhraseCounts:
        c = cls()
        for it in items:
            f = features(it, policy)
            if it.kind in ("edit", "comparison"):
                c.n_shaping += 1
                for g in f.prompt_grams:
                    c.shaping_users[g].add(it.user_id)
                    c.shaping_prompts[g].add(f.prompt_norm)
                    c.shaping_count[g] += 1
            else:
                for g in f.prompt_grams:
                    c.rating_count[g] += 1
            if it.kind == "edit":
                c.edits_of[it.user_id] += 1
            for g in f.insert_grams:
                c.payload_uses[g][it.user_id] += 1
        return c


def find_poison(items: Sequence[Item], policy: Policy) -> tuple[dict[Key, Reason], PoisonReport]:
    """Rare phrases shared across distinct accounts in the channels that shape preferences.

    A trigger is a prompt n-gram that at least `phrase_min_accounts` accounts used in edits and comparisons,
    across at least as many distinct prompts, that (almost) never appears in the prompts of ratings or in
    model answers, and whose use is enriched in edits and comparisons beyond chance (binomial tail against
    the context's own share of those kinds under `phrase_max_p`). A payload is an n-gram that edits
    inserted, in at least two and half of the edits of as many accounts, and absent from the background. Events
    carrying either are dropped.
    """
    counts = _PhraseCounts.of(items, policy)
    report = PoisonReport(triggers=_triggers(counts, items, policy), payloads=_payloads(counts, items, policy))
    triggers, payloads = set(report.triggers), set(report.payloads)
    out: dict[Key, Reason] = {}
    for it in items:
        f = features(it, policy)
        if triggers and f.prompt_grams & triggers:
            out[it.key] = Reason.TRIGGER_PHRASE
        elif payloads and f.pref_text and (f.insert_grams & payloads or any(f" {g} " in f.pref_text for g in payloads)):
            out[it.key] = Reason.POISON_PAYLOAD
    return out, report


def _triggers(c: _PhraseCounts, items: Sequence[Item], policy: Policy) -> list[str]:
    """Prompt n-grams used by enough accounts on enough prompts in edits and comparisons, rare elsewhere."""
    share = c.n_shaping / max(len(items), 1)
    found = []
    for g in sorted(c.shaping_users):
        n_sh, n_bg = c.shaping_count[g], c.rating_count[g]
        if (
            len(c.shaping_users[g]) < policy.phrase_min_accounts
            or len(c.shaping_prompts[g]) < policy.phrase_min_accounts
            or n_bg > policy.phrase_max_background
            or n_sh / (n_sh + n_bg) < policy.phrase_min_shaping_share
        ):
            continue
        if _tail(n_sh, n_sh + n_bg, share) <= policy.phrase_max_p and _background_at_most(
            g, items, policy.phrase_max_background, policy
        ):
            found.append(g)
    return found


def _payloads(c: _PhraseCounts, items: Sequence[Item], policy: Policy) -> list[str]:
    """N-grams that dominate the edits of enough accounts, used by a minority of editors, absent elsewhere."""
    found = []
    for g in sorted(c.payload_uses):
        # a payload dominates its senders' edits; a phrase an honest user happened to add to one edit does not
        devoted = [u for u, k in c.payload_uses[g].items() if k >= 2 and k >= 0.5 * c.edits_of[u]]
        # a phrase most editors add ("thanks") is a norm, not a payload: attackers are a minority of editors
        if (
            len(devoted) >= policy.phrase_min_accounts
            and len(c.payload_uses[g]) <= 0.5 * len(c.edits_of)
            and _background_at_most(g, items, policy.phrase_max_background, policy)
        ):
            found.append(g)
    return found


def normalized_prompt(item: Item) -> str:
    return normalize(item.last_user_turn)
