"""Routing decisions, pure: which version answers a request (sticky canary bucket), which versions to keep loaded."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from deploy.models import Routing


def canary_bucket(user: str, canary_version: str) -> float:
    """A stable number in [0, 1) for this user and this canary: the same user stays on the same side."""
    digest = hashlib.sha256(f"{canary_version}\x00{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_version(routing: Routing, user: str | None) -> str | None:
    """The adapter version for one request: the canary for users whose bucket falls under its share, else active.

    A request without `user` has nothing to stay sticky on, so it goes to the active version.
    """
    if routing.canary is not None and user and canary_bucket(user, routing.canary) < routing.canary_share:
        return routing.canary
    return routing.active


def choose_evictions(
    resident: Iterable[str], last_used: dict[str, float], keep: set[str], pinned: set[str], max_resident: int
) -> list[str]:
    """Least recently used versions to unload so at most `max_resident` stay; never one routed to or running."""
    resident = list(resident)
    excess = len(resident) - max_resident
    if excess <= 0:
        return []
    candidates = sorted((v for v in resident if v not in keep and v not in pinned), key=lambda v: last_used.get(v, 0.0))
    return candidates[:excess]
