"""Pair building: kept events -> TRL conversational preference pairs and unpaired KTO examples, weights, lineage."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from curation.items import Item, _digest
from curation.settings import Policy
from curation.text import is_refusal


@dataclass(frozen=True)
class Pair:
    pair_id: str
    prompt: tuple[tuple[str, str], ...]
    chosen: str
    rejected: str
    weight: float
    dimension: str
    event_ids: tuple[str, ...]
    created_at: datetime

    def to_json(self) -> dict:
        return {
            "prompt": _messages(self.prompt),
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
            "weight": self.weight,
            "dimension": self.dimension,
            "event_ids": list(self.event_ids),
            "created_at": self.created_at.isoformat(),
            "pair_id": self.pair_id,
        }


@dataclass(frozen=True)
class Unpaired:
    example_id: str
    prompt: tuple[tuple[str, str], ...]
    completion: str
    label: bool
    weight: float
    dimension: str
    event_ids: tuple[str, ...]
    created_at: datetime

    def to_json(self) -> dict:
        return {
            "prompt": _messages(self.prompt),
            "completion": [{"role": "assistant", "content": self.completion}],
            "label": self.label,
            "weight": self.weight,
            "dimension": self.dimension,
            "event_ids": list(self.event_ids),
            "created_at": self.created_at.isoformat(),
            "example_id": self.example_id,
        }


def _messages(prompt) -> list[dict]:
    return [{"role": r, "content": c} for r, c in prompt]


def dimension_of(texts: Sequence[str], policy: Policy) -> str:
    """`safety` when the preference turns on a refusal, a compliance or unsafe content; else `helpfulness`."""
    for t in texts:
        if is_refusal(t) or any(re.search(p, t, re.IGNORECASE) for p in policy.unsafe_patterns):
            return "safety"
    return "helpfulness"


def _id(kind: str, app_id: str, event_ids: Sequence[str], *texts: str) -> str:
    # the app is part of the id: event ids are unique per app only, and every pair comes from one app's prompt
    return _digest(json.dumps([kind, app_id, sorted(event_ids), [_digest(t) for t in texts]]))


def build_pairs(
    items: Sequence[Item], weight_of: Callable[[str], float], policy: Policy
) -> tuple[list[Pair], list[Unpaired]]:
    """Edits: edited over response. Comparisons: the weighted winner over the other (ties give nothing).
    Ratings of different answers to one prompt: up over down, votes weighted by reliability; the rest unpaired."""
    pairs: list[Pair] = []
    unpaired: list[Unpaired] = []
    comparisons: dict[tuple, list[Item]] = defaultdict(list)
    ratings: dict[str, list[Item]] = defaultdict(list)
    for it in sorted(items, key=lambda i: i.sort_key):
        if it.kind == "edit" and it.response is not None and it.edited is not None:
            pairs.append(_edit_pair(it, weight_of, policy))
        elif it.kind == "comparison" and it.chosen is not None and it.responses:
            comparisons[(it.prompt_key, tuple(sorted(it.responses)))].append(it)
        elif it.kind == "rating" and it.response is not None:
            ratings[it.prompt_key].append(it)
    for key in sorted(comparisons):
        pairs.extend(_comparison_pair(comparisons[key], key[1], weight_of, policy))
    for pkey in sorted(ratings):
        got_pairs, got_unpaired = _rating_examples(ratings[pkey], weight_of, policy)
        pairs.extend(got_pairs)
        unpaired.extend(got_unpaired)
    return pairs, unpaired


def _edit_pair(it: Item, weight_of: Callable[[str], float], policy: Policy) -> Pair:
    """An edit: what the user wrote over what the model answered."""
    assert it.edited is not None and it.response is not None  # build_pairs passes only complete edits
    return Pair(
        _id("edit", it.app_id, [it.event_id], it.edited, it.response),
        it.prompt,
        it.edited,
        it.response,
        round(weight_of(it.user_id), 6),
        dimension_of([it.edited, it.response], policy),
        (it.event_id,),
        it.occurred_at,
    )


def _comparison_pair(
    group: list[Item], answers: tuple[str, str], weight_of: Callable[[str], float], policy: Policy
) -> list[Pair]:
    """Side-by-side choices between the same two answers: the weighted winner over the other; a tie, nothing."""
    score: dict[str, float] = defaultdict(float)
    for it in group:
        assert it.responses is not None and it.chosen is not None  # grouped only when both are set
        score[it.responses[it.chosen]] += weight_of(it.user_id)
    a, b = answers
    if score[a] == score[b]:
        return []
    win, lose = (a, b) if score[a] > score[b] else (b, a)
    ids = tuple(sorted(it.event_id for it in group))
    weight = round(min(1.0, (score[win] - score[lose]) / len(group)), 6)
    return [
        Pair(
            _id("comparison", group[0].app_id, ids, win, lose),
            group[0].prompt,
            win,
            lose,
            weight,
            dimension_of([win, lose], policy),
            ids,
            max(it.occurred_at for it in group),
        )
    ]


def _rating_examples(
    group: list[Item], weight_of: Callable[[str], float], policy: Policy
) -> tuple[list[Pair], list[Unpaired]]:
    """Ratings of one prompt's answers: every net-up answer over every net-down one; without both, unpaired."""
    by_resp: dict[str, list[Item]] = defaultdict(list)
    for it in group:
        assert it.response is not None  # grouped only with a response
        by_resp[it.response].append(it)
    net = {
        r: sum(weight_of(it.user_id) * (1 if it.rating == "up" else -1) for it in its) / len(its)
        for r, its in by_resp.items()
    }
    ups = sorted(r for r, s in net.items() if s > 0)
    downs = sorted(r for r, s in net.items() if s < 0)
    if ups and downs:
        pairs = []
        for u in ups:
            for d in downs:
                ids = tuple(sorted(it.event_id for it in by_resp[u] + by_resp[d]))
                pairs.append(
                    Pair(
                        _id("ratings", group[0].app_id, ids, u, d),
                        group[0].prompt,
                        u,
                        d,
                        round(min(1.0, min(net[u], -net[d])), 6),
                        dimension_of([u, d], policy),
                        ids,
                        max(it.occurred_at for it in by_resp[u] + by_resp[d]),
                    )
                )
        return pairs, []
    unpaired = []
    for r in sorted(by_resp):
        if net[r] == 0:
            continue  # conflicting votes that cancel teach nothing
        its = by_resp[r]
        ids = tuple(sorted(it.event_id for it in its))
        unpaired.append(
            Unpaired(
                _id("rating", group[0].app_id, ids, r),
                group[0].prompt,
                r,
                net[r] > 0,
                round(min(1.0, abs(net[r])), 6),
                dimension_of([r], policy),
                ids,
                max(it.occurred_at for it in its),
            )
        )
    return [], unpaired
