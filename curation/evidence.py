"""Evidence that outlives a window: per-account, per-item, per-prompt and per-phrase records, and the verdicts on them.

`advance(evidence, window_items, policy)` is pure: it returns the verdict for the window (accounts and
phrases judged adversarial, and the earlier events to re-judge) and a new Evidence; the input is not
changed. Records are JSON values (lists, dicts, numbers, strings), so the store keeps them as they are
and a restarted worker continues from exactly the state the replay would hold. Windows are advanced in
event-time order by both paths, and an empty window changes nothing, so the replay and the stream agree.

What accumulates, and the judgement it supports (each one a principle camouflage cannot reset):
- accounts: first/last seen, volume, ip_hash and device_id sets -> source churn (a person
  keeps one or two devices; a paced bot rotating through a pool does not); a histogram of the gaps between
  its events (log2 bins, constant size) -> long-run timing regularity (a person's gaps spread over orders of
  magnitude, sessions and pauses, with a positive burstiness; a metronome's stay in one band, however slowly
  it goes, so a bot sending one event per window is seen too; gaps over 4.5 hours are left out, as a daily
  habit is a person's rhythm). New accounts per window against the running
  mean -> a new-account wave (a signal in the report; it drops nothing on its own).
- items: every vote on a judged answer -> one-coin Dawid-Skene reliability over each account's whole
  history (systematic contrarians) and coordinated groups (accounts that vote the same way on the same
  items beyond chance, over days, against everyone else's votes there: slow brigades).
- crowd: up and down ratings per answer text -> whether raters prefer an answer an edit replaces.
- prompts: how often edits and comparisons on a canonical prompt go against the crowd (move away from a
  refusal, or edit away an answer raters prefer) when they could -> the base rate.
- phrases: text appended to a known prompt (zero-width and homoglyphs folded first) by edits and
  comparisons -> a trigger when its uses go against the crowd far more than the same prompts without it
  do, across distinct accounts. Ratings that mention the phrase do not enter the test, so camouflage
  ratings cannot switch it off.
- grams and answers: n-grams edits insert (distinct accounts, prompts) and how many model answers ever
  carried each n-gram -> a payload, with one edit per account.

Not bounded yet: records are kept for the store's whole history (no horizon pruning).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from curation.confusables import canonical
from curation.guards import connected_groups, preferred_text
from curation.items import Item, _digest
from curation.reasons import Reason
from curation.settings import Policy
from curation.text import inserted_spans, is_refusal, ngrams, tokens

SECTIONS = ("accounts", "items", "prompts", "phrases", "grams", "answers", "crowd", "flags", "meta")
_LIST_CAP = 64  # ids kept per record beyond which only counts grow (a phrase that common is no trigger)


@dataclass(frozen=True)
class Evidence:
    """The accumulated records, one dict per section (key -> JSON value). Treated as immutable."""

    sections: dict[str, dict] = field(default_factory=lambda: {s: {} for s in SECTIONS})

    def get(self, section: str, key: str, default=None):
        return self.sections[section].get(key, default)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, object]]) -> Evidence:
        sections: dict[str, dict] = {s: {} for s in SECTIONS}
        for section, key, value in rows:
            sections.setdefault(section, {})[key] = value
        return cls(sections)


@dataclass
class Verdict:
    """What a window's settle learns from the evidence: flags for its own events and re-judged earlier ones."""

    accounts: dict[str, str] = field(default_factory=dict)  # user -> reason (all flagged so far)
    triggers: dict[str, str] = field(default_factory=dict)  # canonical phrase -> reason
    payloads: dict[str, str] = field(default_factory=dict)  # gram -> reason
    retract: dict[str, str] = field(default_factory=dict)  # earlier event_id -> reason
    accuracy: dict[str, float] = field(default_factory=dict)  # long-run reliability of accounts with overlap
    retract_accounts: dict[str, str] = field(default_factory=dict)  # newly judged user -> reason (earlier events)
    new_accounts: int = 0  # accounts first seen in this window
    wave: bool = False  # far more new accounts than the running mean (a signal only)

    def reasons_for(self, item: Item) -> list[str]:
        out = []
        if item.user_id in self.accounts:
            out.append(self.accounts[item.user_id])
        if item.kind in ("edit", "comparison") and self.triggers:
            text = " " + " ".join(canon_tokens(item.last_user_turn)) + " "
            if any(f" {p} " in text for p in self.triggers):
                out.append(str(Reason.TRIGGER_PHRASE))
        if self.payloads:
            pref = preferred_text(item)
            if pref is not None:
                text = " " + " ".join(canon_tokens(pref)) + " "
                if any(f" {g} " in text for g in self.payloads):
                    out.append(str(Reason.POISON_PAYLOAD))
        return out


@dataclass
class Changes:
    """Keys written by one advance (value None: deleted), for the store to upsert only what moved."""

    rows: dict[tuple[str, str], object] = field(default_factory=dict)


# ------------------------------------------------------------------ per event
def canon_tokens(text: str) -> list[str]:
    return tokens(canonical(text))


def away_from_refusal(item: Item) -> bool:
    """An edit that turns a refusal into something else, or a comparison that prefers the non-refusal."""
    if item.kind == "edit":
        return is_refusal(item.response or "") and not is_refusal(item.edited or "")
    if item.kind == "comparison" and item.chosen is not None and item.responses:
        a, b = item.responses[item.chosen], item.responses[1 - item.chosen]
        return is_refusal(b) and not is_refusal(a)
    return False


def refusal_at_stake(item: Item) -> bool:
    """Whether the event could move away from a refusal: an edit of one, or a comparison with one on one side."""
    if item.kind == "edit":
        return is_refusal(item.response or "")
    if item.kind == "comparison" and item.chosen is not None and item.responses:
        return is_refusal(item.responses[0]) != is_refusal(item.responses[1])
    return False


def _answer_key(text: str) -> str:
    return _digest(" ".join(canon_tokens(text)))


def crowd_prefers(text: str, w) -> bool | None:
    """Whether raters (at least three, two thirds of them) liked this answer; None when they have not said."""
    up, down = w.get("crowd", _answer_key(text)) or [0, 0]
    if up + down < 3:
        return None
    return up >= 2 * down


def against_the_crowd(item: Item, w) -> tuple[bool, bool]:
    """(could it, did it): move away from a refusal, or edit away an answer the raters prefer."""
    if refusal_at_stake(item):
        return True, away_from_refusal(item)
    if item.kind == "edit" and item.response:
        liked = crowd_prefers(item.response, w)
        if liked is not None:
            return True, liked
    return False, False


def vote_key(item: Item) -> tuple[str, str] | None:
    from curation.guards import vote_of

    return vote_of(item)


def split_appendage(toks: Sequence[str], known: dict) -> tuple[str, str] | None:
    """(base prompt, appended phrase) when the prompt is a known prompt with words added before or after it.

    The longest known base wins, so a phrase is as short as the evidence allows; None when no base is known.
    """
    n = len(toks)
    for cut in range(1, min(n, 12)):
        # the shortest appendage first: a suffix of `cut` tokens, then a prefix of `cut` tokens
        suffix_base, prefix_base = " ".join(toks[: n - cut]), " ".join(toks[cut:])
        if suffix_base in known:
            return suffix_base, " ".join(toks[n - cut :])
        if prefix_base in known:
            return prefix_base, " ".join(toks[:cut])
    return None


# ------------------------------------------------------------------ statistics
def upper_tail(k: int, probs: Sequence[float]) -> float:
    """P(X >= k) for X a sum of independent Bernoulli(p_i) (Poisson-binomial), by dynamic programming."""
    if k <= 0:
        return 1.0
    if k > len(probs):
        return 0.0
    dist = [1.0] + [0.0] * k  # dist[j] = P(X = j) for j < k; dist[k] = P(X >= k)
    for p in probs:
        dist[k] += dist[k - 1] * p  # once at k, X stays at "k or more"
        for j in range(k - 1, 0, -1):
            dist[j] = dist[j] * (1 - p) + dist[j - 1] * p
        dist[0] *= 1 - p
    return dist[k]


def lower_tail(k: int, lam: float) -> float:
    """P(X <= k) for X ~ Poisson(lam), summed in log space (exp(-lam) underflows for a large lam)."""
    if lam <= 0 or k >= lam:
        return 1.0 if lam <= 0 else 0.5  # at or above the mean: no evidence of rarity (0.5 bounds it below)
    log_lam = math.log(lam)
    return min(1.0, sum(math.exp(-lam + i * log_lam - math.lgamma(i + 1)) for i in range(k + 1)))


@lru_cache(maxsize=50_000)
def _answer_grams(text: str) -> frozenset[str]:
    """The n-grams of a model answer (answers repeat across events, so they are computed once)."""
    return frozenset(ngrams(canon_tokens(text)))


def _logit(p: float) -> float:
    p = min(max(p, 0.02), 0.98)
    return math.log(p / (1 - p))


def fit_reliability(
    items: dict, prior: float, strength: float, iterations: int = 6
) -> tuple[dict[str, float], dict[str, int], dict[str, str]]:
    """One-coin Dawid-Skene over every stored vote: (accuracy, overlap, consensus per item).

    Leave-one-out weighted majority per vote; accuracy is agreement with a Beta(prior*strength) prior.
    Items with fewer than three voters carry no evidence about anyone.
    """
    keys = sorted(k for k, votes in items.items() if len({u for u, _ in votes}) >= 3)
    users = sorted({u for k in keys for u, _ in items[k]})
    acc = {u: prior for u in users}
    seen = {u: 0 for u in users}
    for _ in range(iterations):
        agree = dict.fromkeys(users, 0.0)
        seen = dict.fromkeys(users, 0)
        weight = {u: _logit(a) for u, a in acc.items()}
        for key in keys:
            votes = items[key]
            score: dict[str, float] = defaultdict(float)
            for u, label in votes:
                score[label] += weight[u]
            for u, label in votes:
                w = weight[u]
                score[label] -= w
                best = max(score.values())
                winners = [lab for lab, s in score.items() if s == best]
                score[label] += w
                if len(winners) != 1 or (best <= 0 and len(score) == 1):
                    continue
                seen[u] += 1
                agree[u] += winners[0] == label
        acc = {u: (agree[u] + prior * strength) / (seen[u] + strength) for u in users}
    consensus = {}
    for key in keys:
        score = defaultdict(float)
        for u, label in items[key]:
            score[label] += _logit(acc[u])
        consensus[key] = sorted(score, key=lambda lab: (-score[lab], lab))[0]
    return acc, seen, consensus


def coordinated_groups(
    items: dict, exclude: set[str], max_p: float, min_accounts: int, link_p: float | None = None
) -> list[list[str]]:
    """Groups of accounts that vote the same way on the same items more than chance, against everyone else.

    1. Two accounts are linked when their same-way votes on the same items exceed chance: a Poisson tail
       under `link_p` (default `max_p`) with mean n_a x n_b x sum of squared (item, label) shares (popular items
       are shared by honest heavy voters too, and this mean says how much).
    2. Members keep at least three links inside their group (a 3-core), so chance links chain nobody.
    3. On each item, the members voting one way (three or more) are tested against the other accounts'
       rate for that label (binomial tail under `max_p`): honest heavy voters co-vote too, but the way
       everyone else does. Members that voted against everyone else on two items or more are the brigade
       (when there are `min_accounts` of them).
    """
    # links use every account (a member already judged for another reason still ties the others together);
    # "everyone else" leaves out the accounts already judged
    votes = {k: [(u, lab) for u, lab in vs] for k, vs in sorted(items.items())}
    if not sum(len(vs) for vs in votes.values()):
        return []
    links = _three_core(_chance_links(votes, link_p or max_p))
    out = []
    for group in connected_groups((a, b) for a in sorted(links) for b in sorted(links[a])):
        if len(group) < min_accounts:
            continue
        culprits = _against_everyone(set(group), votes, exclude, max_p)
        if len(culprits) >= min_accounts:
            out.append(culprits)
    return out


def _chance_links(votes: dict[str, list[tuple[str, str]]], link_p: float) -> dict[str, set[str]]:
    """Step 1: accounts whose same-way votes on the same items exceed chance (a Poisson tail under `link_p`)."""
    total = sum(len(vs) for vs in votes.values())
    n_of: dict[str, int] = defaultdict(int)
    share: dict[tuple[str, str], int] = defaultdict(int)
    for k, vs in votes.items():
        for u, lab in vs:
            n_of[u] += 1
            share[(k, lab)] += 1
    s2 = sum((c / total) ** 2 for c in share.values())
    pair: dict[tuple[str, str], int] = defaultdict(int)
    for vs in votes.values():
        by_label: dict[str, list[str]] = defaultdict(list)
        for u, lab in vs:
            by_label[lab].append(u)
        for who in by_label.values():
            who = sorted(set(who))
            if len(who) > 300:
                continue  # an item everyone votes on links nobody in particular
            for i, a in enumerate(who):
                for b in who[i + 1 :]:
                    pair[(a, b)] += 1
    links: dict[str, set[str]] = defaultdict(set)
    for (a, b), c in sorted(pair.items()):
        if c >= 3 and _poisson_upper(c, n_of[a] * n_of[b] * s2) <= link_p:
            links[a].add(b)
            links[b].add(a)
    return links


def _three_core(links: dict[str, set[str]]) -> dict[str, set[str]]:
    """Step 2: peel to the 3-core (in place): a chance link or two chains nobody into a group."""
    changed = True
    while changed:
        changed = False
        for u in sorted(links):
            if 0 < len(links[u]) < 3:
                for v in links[u]:
                    links[v].discard(u)
                links[u] = set()
                changed = True
    return links


def _against_everyone(
    members: set[str], votes: dict[str, list[tuple[str, str]]], exclude: set[str], max_p: float
) -> list[str]:
    """Step 3: the members that voted against everyone else (binomial tail under `max_p`) on two items or more."""
    against: dict[str, int] = defaultdict(int)
    for vs in votes.values():
        inside: dict[str, set[str]] = defaultdict(set)
        rest: dict[str, int] = defaultdict(int)
        for u, lab in vs:
            if u in members:
                inside[lab].add(u)
            elif u not in exclude:
                rest[lab] += 1
        for lab, voters in sorted(inside.items()):
            if len(voters) < 3:
                continue
            # how likely this many members vote `lab` if they voted like everyone else does on this item
            p_lab = (rest.get(lab, 0) + 1.0) / (sum(rest.values()) + 2.0)
            if (
                p_lab < 0.5
                and upper_tail(
                    len(voters), [p_lab] * (len(voters) + sum(len(o) for lb, o in inside.items() if lb != lab))
                )
                <= max_p
            ):
                for u in voters:
                    against[u] += 1
    return sorted(u for u, n in against.items() if n >= 2)


def _poisson_upper(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam)."""
    if lam <= 0:
        return 0.0 if k > 0 else 1.0
    log_lam = math.log(lam)
    return min(1.0, sum(math.exp(-lam + i * log_lam - math.lgamma(i + 1)) for i in range(k, k + 40)))


# ------------------------------------------------------------------ the update
class _Writer:
    """Copy-on-write over an Evidence: reads see the new values, writes are recorded as changes."""

    def __init__(self, ev: Evidence):
        self.sections = {s: dict(d) for s, d in ev.sections.items()}
        self.changes = Changes()

    def get(self, section: str, key: str, default=None):
        return self.sections[section].get(key, default)

    def put(self, section: str, key: str, value) -> None:
        self.sections[section][key] = value
        self.changes.rows[(section, key)] = value


def _capped_add(values: list, value, cap: int = _LIST_CAP) -> list:
    if value in values or len(values) >= cap:
        return values
    return [*values, value]


_GAP_BINS = 24  # log2 bins of seconds: [0, 1), [1, 2), [2, 4), ... up to about 48 days and beyond


def gap_histogram(h: list[int] | None, gap_s: float) -> list[int]:
    """`h` with one more gap between an account's events, in its log2 bin (constant size)."""
    h = list(h) if h else [0] * _GAP_BINS
    b = 0 if gap_s < 1 else min(_GAP_BINS - 1, 1 + int(math.log2(gap_s)))
    h[b] += 1
    return h


_SHORT_BINS = 15  # gaps under 2**14 s (4.5 h): longer pauses follow a person's day, and a daily habit is no bot


def short_gaps(h: list[int] | None) -> int:
    return sum((h or ())[:_SHORT_BINS])


def band_share(h: list[int]) -> float:
    """The largest share of the short gaps inside two adjacent bins (a factor-4 band of durations)."""
    short = h[:_SHORT_BINS]
    total = sum(short)
    return max(short[b] + short[b + 1] for b in range(len(short) - 1)) / total if total else 0.0


def _observe(w: _Writer, items: Sequence[Item]) -> tuple[int, int]:
    """Fold a window's events into the records; returns how many votes were added and how many accounts
    were seen for the first time."""
    votes = 0
    newcomers = 0
    known_prompts = w.sections["prompts"]
    for it in items:
        newcomers += _observe_account(w, it)
        v = vote_key(it)
        if v is not None:
            w.put("items", v[0], (w.get("items", v[0]) or []) + [[it.user_id, v[1]]])
            votes += 1
        _observe_prompt(w, it, known_prompts)
        if it.kind == "rating" and it.response:
            key = _answer_key(it.response)
            up, down = w.get("crowd", key) or [0, 0]
            w.put("crowd", key, [up + (it.rating == "up"), down + (it.rating != "up")])
        if it.kind == "edit":
            _observe_edit(w, it)
    _observe_answers(w, items)
    windows, new = w.get("meta", "newcomers") or [0, 0]
    w.put("meta", "newcomers", [windows + 1, new + newcomers])
    return votes, newcomers


def _observe_account(w: _Writer, it: Item) -> int:
    """The event's account: seen when and from where, and the gap since its last event; 1 when it is new."""
    # no event ids here: an account judged later is re-judged by its id (the store and the replay know
    # which decisions are whose), so the record stays small however long the account lives
    a = w.get("accounts", it.user_id)
    newcomer = a is None
    if a is None:
        a = {"first": it.occurred_at.timestamp(), "n": 0, "ips": [], "devs": []}
    else:
        a = {**a, "gaps": gap_histogram(a.get("gaps"), it.occurred_at.timestamp() - a["last"])}
    a = {
        **a,
        "last": it.occurred_at.timestamp(),
        "n": a["n"] + 1,
        "ips": _capped_add(a["ips"], it.ip_hash) if it.ip_hash else a["ips"],
        "devs": _capped_add(a["devs"], it.device_id) if it.device_id else a["devs"],
    }
    w.put("accounts", it.user_id, a)
    return int(newcomer)


def _observe_prompt(w: _Writer, it: Item, known_prompts: dict) -> None:
    """The event's prompt: a base prompt of its own, or a known base with an appended phrase."""
    toks = canon_tokens(it.last_user_turn)
    prompt = " ".join(toks)
    shaping = it.kind in ("edit", "comparison")
    chance, bad = against_the_crowd(it, w)
    split = split_appendage(toks, known_prompts) if prompt not in known_prompts else None
    if split is None:
        # a prompt of its own: a base that later appendages are measured against. Its edits and comparisons
        # are remembered, because a phrase found later may turn out to be inside it (no base was known yet)
        n, k, ids = w.get("prompts", prompt) or [0, 0, []]
        if shaping:
            ids = _capped_add(ids, it.event_id)
        if chance:
            n, k = n + 1, k + bad
            total = w.get("meta", "stake") or [0, 0]
            w.put("meta", "stake", [total[0] + 1, total[1] + bad])
        if chance or shaping or prompt not in known_prompts:
            w.put("prompts", prompt, [n, k, ids])
        return
    base, phrase = split
    p = w.get("phrases", phrase) or {"uses": [], "users": [], "natural": 0}
    if shaping:
        # the base prompt's own rate of going against the crowd when it could (-1: it could not), shrunk
        # towards the rate over every prompt, so a base seen twice does not look either way
        n, k = (w.get("prompts", base) or [0, 0])[:2]
        big_n, big_k = w.get("meta", "stake") or [0, 0]
        pooled = (big_k + 1.0) / (big_n + 20.0)
        rate = round((k + 10.0 * pooled) / (n + 10.0), 6) if chance else -1
        p = {
            **p,
            "uses": p["uses"] + [[it.user_id, it.event_id, int(bad), rate]],
            "users": _capped_add(p["users"], it.user_id),
        }
    else:
        p = {**p, "natural": p["natural"] + 1}
    w.put("phrases", phrase, p)


def _observe_edit(w: _Writer, it: Item) -> None:
    """The n-grams an edit inserted, with the accounts, prompts and events that inserted them."""
    grams = set()
    for span in inserted_spans(canonical(it.response or ""), canonical(it.edited or "")):
        grams |= ngrams(span)
    for g in sorted(grams):
        r = w.get("grams", g) or {"users": [], "prompts": [], "events": [], "n": 0}
        # distinct accounts and prompts only need to reach a threshold; the event ids serve a retraction,
        # and a phrase the model says as often as editors add it ("ordinary") keeps none
        w.put(
            "grams",
            g,
            {
                **r,
                "n": r["n"] + 1,
                "users": _capped_add(r["users"], it.user_id, 8),
                "prompts": _capped_add(r["prompts"], it.prompt_key, 8),
                "events": r["events"] if r.get("ordinary") else _capped_add(r["events"], it.event_id),
            },
        )


def _observe_answers(w: _Writer, items: Sequence[Item]) -> None:
    # natural occurrence: in how many answers the model gave (responses, never an edit's own output) each
    # n-gram appears, over all history, so a phrase honest editors add is known to be ordinary from the start
    natural: dict[str, int] = defaultdict(int)
    for it in items:
        for t in {t for t in (it.response, *(it.responses or ())) if t}:
            for g in _answer_grams(t):
                natural[g] += 1
    for g in sorted(natural):
        w.put("answers", g, w.get("answers", g, 0) + natural[g])


def _touched(w: _Writer, section: str) -> list[str]:
    return sorted(k for s, k in w.changes.rows if s == section)


def _judge_accounts(w: _Writer, policy: Policy) -> tuple[dict[str, str], dict[str, float]]:
    flags = dict(w.get("flags", "accounts") or {})
    for user in _touched(w, "accounts"):
        if user in flags:
            continue
        a = w.sections["accounts"][user]
        if len(a["devs"]) >= policy.churn_max_devices or len(a["ips"]) >= policy.churn_max_ips:
            flags[user] = str(Reason.SOURCE_CHURN)
        elif (
            short_gaps(a.get("gaps")) >= policy.timing_min_gaps
            and band_share(a["gaps"]) >= policy.timing_max_band_share
        ):
            flags[user] = str(Reason.BOT_REGULAR)
    meta = w.get("meta", "reliability") or {"pending": 0, "accuracy": {}}
    if meta["pending"] >= policy.memory_refit_votes:
        # accounts already judged adversarial do not vote in the consensus the others are measured against
        clean = {k: [v for v in votes if v[0] not in flags] for k, votes in w.sections["items"].items()}
        acc, seen, _consensus = fit_reliability(clean, policy.reliability_prior, policy.reliability_prior_strength)
        for user in sorted(acc):
            if (
                user not in flags
                and seen[user] >= policy.contrarian_min_overlap
                and acc[user] < policy.contrarian_below
            ):
                flags[user] = str(Reason.CONTRARIAN)
        # brigades: groups that co-vote beyond chance and against everyone else, over the whole history
        for group in coordinated_groups(
            w.sections["items"], set(flags), policy.covote_max_p, policy.brigade_min_accounts, policy.covote_link_p
        ):
            for u in group:
                flags.setdefault(u, str(Reason.CO_VOTING))
        meta = {
            "pending": 0,
            "accuracy": {u: round(acc[u], 4) for u in sorted(acc) if seen[u] >= policy.reliability_min_overlap},
        }
        w.put("meta", "reliability", meta)
    if flags != (w.get("flags", "accounts") or {}):
        w.put("flags", "accounts", flags)
    return flags, meta["accuracy"]


def _is_common(p: dict, accounts: int, policy: Policy) -> bool:
    """A phrase much of the population uses (a greeting, a sign-off) is part of how people write, not a trigger:
    attackers are a minority, so a trigger's accounts are too. Without this, a shift in honest taste (users
    now edit away what they liked before) makes a common prefix look as if it moved answers against the crowd."""
    users = len(p["users"])
    return users >= _LIST_CAP or users > policy.phrase_max_account_share * max(accounts, 1)


def _judge_phrases(w: _Writer, policy: Policy) -> dict[str, str]:
    flags = dict(w.get("flags", "triggers") or {})
    accounts = len(w.sections["accounts"])
    for phrase in _touched(w, "phrases"):
        if phrase in flags:
            continue
        p = w.sections["phrases"][phrase]
        if _is_common(p, accounts, policy):
            continue
        bad_users = {u for u, _e, bad, _p in p["uses"] if bad}
        if len(bad_users) < policy.phrase_min_accounts:
            continue
        at_stake = [(bad, rate) for _u, _e, bad, rate in p["uses"] if rate >= 0]
        k = sum(bad for bad, _ in at_stake)
        if upper_tail(k, [rate for _, rate in at_stake]) <= policy.trigger_max_p:
            flags[phrase] = str(Reason.TRIGGER_PHRASE)
    if flags != (w.get("flags", "triggers") or {}):
        w.put("flags", "triggers", flags)
    return flags


def _judge_grams(w: _Writer, policy: Policy) -> dict[str, str]:
    flags = dict(w.get("flags", "payloads") or {})
    for g in _touched(w, "grams"):
        if g in flags:
            continue
        r = w.sections["grams"][g]
        # a phrase people add because it is good is one the model also says; a payload is one it never says.
        # A flag is sticky and retracts, so it takes significance (natural occurrences this few at the honest
        # rate), tested once per `payload_test_every` insertions, not every window: early counts are noisy
        # and a test repeated every window would fire on noise sooner or later
        step = r["n"] // policy.payload_test_every
        if step <= r.get("tested", 0):
            continue
        natural = w.get("answers", g, 0)
        ordinary = natural >= policy.payload_natural_rate * r["n"]
        w.put("grams", g, {**r, "tested": step, "ordinary": ordinary, "events": [] if ordinary else r["events"]})
        if (
            len(r["users"]) >= policy.payload_min_accounts
            and len(r["prompts"]) >= policy.payload_min_accounts
            and lower_tail(natural, policy.payload_natural_rate * r["n"]) <= policy.payload_max_p
        ):
            flags[g] = str(Reason.POISON_PAYLOAD)
    if flags != (w.get("flags", "payloads") or {}):
        w.put("flags", "payloads", flags)
    return flags


def advance(
    ev: Evidence, items: Sequence[Item], policy: Policy, mark: str | None = None
) -> tuple[Verdict, Evidence, Changes]:
    """Fold one window's events (sorted, each window once, in event-time order) into the evidence and judge.

    Returns the verdict (flags so far, and the earlier events that newly flagged accounts and phrases
    re-judge), the new evidence, and the changed keys. An empty window returns the evidence unchanged.
    `mark` (the window's start) is recorded as meta/applied, so a worker can tell whether its copy is current.
    """
    before_accounts = dict(ev.get("flags", "accounts") or {})
    before_triggers = dict(ev.get("flags", "triggers") or {})
    before_payloads = dict(ev.get("flags", "payloads") or {})
    if not items:
        meta = ev.get("meta", "reliability") or {"accuracy": {}}
        return Verdict(before_accounts, before_triggers, before_payloads, {}, meta["accuracy"]), ev, Changes()
    w = _Writer(ev)
    if mark is not None:
        w.put("meta", "applied", mark)
    votes, new = _observe(w, items)
    meta = w.get("meta", "reliability") or {"pending": 0, "accuracy": {}}
    w.put("meta", "reliability", {**meta, "pending": meta["pending"] + votes})
    accounts, accuracy = _judge_accounts(w, policy)
    triggers = _judge_phrases(w, policy)
    payloads = _judge_grams(w, policy)
    retract: dict[str, str] = {}
    in_window = {it.event_id for it in items}
    retract_accounts = {u: accounts[u] for u in sorted(set(accounts) - set(before_accounts))}
    for phrase in sorted(set(triggers) - set(before_triggers)):
        for _u, eid, _b, _p in w.sections["phrases"][phrase]["uses"]:
            retract.setdefault(eid, triggers[phrase])
        needle = f" {phrase} "
        for prompt in sorted(w.sections["prompts"]):
            if needle in f" {prompt} ":
                for eid in w.sections["prompts"][prompt][2]:
                    retract.setdefault(eid, triggers[phrase])
    for g in sorted(set(payloads) - set(before_payloads)):
        for eid in w.sections["grams"][g]["events"]:
            retract.setdefault(eid, payloads[g])
    retract = {e: r for e, r in sorted(retract.items()) if e not in in_window}
    wave = _wave(ev, new, policy)
    return (
        Verdict(accounts, triggers, payloads, retract, accuracy, retract_accounts, new, wave),
        Evidence(w.sections),
        w.changes,
    )


def _wave(before: Evidence, new: int, policy: Policy) -> bool:
    """Whether this window's `new` accounts are a wave: more than the mean of the earlier windows (with events)
    can explain (Poisson tail under `wave_max_p`), once six windows set the mean."""
    windows, total = before.get("meta", "newcomers") or [0, 0]
    return windows >= 6 and _poisson_upper(new, max(total / windows, 1.0)) <= policy.wave_max_p
