"""One turn of the loop: what it builds on and what it trains on, decided from the registry's state (pure).

A turn starts from whatever serves now. Its new data is every curated record since the previous turn's mark
(whatever became of that turn: promoted, rejected or rolled back, its data is not fed again on its own); to
that it adds a bounded replay of what the active adapter and its ancestors were trained on, so the serving
behaviour is not forgotten. It trains on from the active adapter's weights (or a fresh LoRA, per run config),
is gated against the active adapter and the base, and is canaried against the active adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from alignloop.core.contracts import TurnRecord

MAX_ANCESTORS = 64  # a lineage chain longer than this is cut: replay is bounded anyway


@dataclass(frozen=True)
class VersionView:
    """What a turn needs to know of one registered version."""

    version: str
    parent_version: str | None
    status: str
    turn: TurnRecord | None  # the manifest's `dataset.turn`, absent on versions made before turns existed
    trained_event_ids: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class TurnPlan:
    parent: str | None  # the active version: what serves now (None: the base)
    canary: str | None  # a live canary: this turn must not start another
    since: datetime | None  # the previous turn's mark: new data starts here (None: all data)
    replay_ids: frozenset[str]  # events the active adapter's chain was trained on
    previous_turn: str | None  # the version whose mark `since` is

    @property
    def blocked_reason(self) -> str | None:
        if self.canary is not None:
            return (
                f"canary {self.canary} is live: a turn starts only when canary-watch has promoted it or "
                "rolled it back (never two canaries)"
            )
        return None


def _mark(view: VersionView) -> datetime | None:
    return view.turn.until if view.turn is not None else None


def plan_turn(active: str | None, canary: str | None, versions: list[VersionView]) -> TurnPlan:
    """The plan of the next turn for one base model, from its routing and every version registered for it."""
    by_name = {v.version: v for v in versions}
    marked = [(m, v.version) for v in versions if (m := _mark(v)) is not None]
    since, previous = max(marked) if marked else (None, None)
    replay: set[str] = set()
    cur, hops = active, 0
    while cur is not None and cur in by_name and hops < MAX_ANCESTORS:
        replay |= by_name[cur].trained_event_ids
        cur, hops = by_name[cur].parent_version, hops + 1
    return TurnPlan(parent=active, canary=canary, since=since, replay_ids=frozenset(replay), previous_turn=previous)
