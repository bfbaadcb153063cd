"""The canary decision: a Bayesian sequential test of the canary's satisfaction rate against the active one.

An event is a success when a user rated the answer up, a failure when they rated it down or rewrote it
(an edit says the answer needed fixing). Each side's rate has a Beta(1 + successes, 1 + failures)
posterior; after every batch of feedback the watch asks how likely the canary is worse than the active
adapter by more than a tolerance, and stops as soon as either answer is clear (or the budget runs out).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from pydantic import BaseModel, Field


class CanaryVerdict(StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    CONTINUE = "continue"


class CanaryPolicy(BaseModel):
    """Thresholds of the canary watch (YAML: `flows/configs/canary.yaml`)."""

    min_events: int = Field(30, ge=1, description="feedback events on the canary before any verdict")
    max_events: int = Field(2000, ge=1, description="budget: decide by then, keeping the active one if in doubt")
    tolerance: float = Field(0.02, ge=0, le=1, description="how much worse than active still counts as no worse")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="posterior probability needed for a verdict")
    samples: int = Field(20000, ge=1000, description="Monte Carlo draws from each posterior")


@dataclass(frozen=True)
class ArmStats:
    successes: int
    failures: int

    @property
    def n(self) -> int:
        return self.successes + self.failures

    @classmethod
    def from_feedback(cls, stats: dict) -> ArmStats:
        """From curation's per-version counts: up is a success; down and edits are failures."""
        return cls(successes=int(stats.get("up", 0)), failures=int(stats.get("down", 0)) + int(stats.get("edits", 0)))


@dataclass(frozen=True)
class CanaryDecision:
    verdict: CanaryVerdict
    p_worse: float
    canary_rate: float
    active_rate: float
    canary_events: int
    reason: str


def decide_canary(canary: ArmStats, active: ArmStats, policy: CanaryPolicy, *, seed: int = 0) -> CanaryDecision:
    """Promote, roll back or keep watching, from the counts so far (pure and deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    c = rng.beta(1 + canary.successes, 1 + canary.failures, policy.samples)
    a = rng.beta(1 + active.successes, 1 + active.failures, policy.samples)
    p_worse = float(np.mean(c < a - policy.tolerance))
    c_rate = canary.successes / canary.n if canary.n else 0.0
    a_rate = active.successes / active.n if active.n else 0.0
    rates = f"canary {c_rate:.3f} over {canary.n} events, active {a_rate:.3f} over {active.n}"

    def decision(verdict: CanaryVerdict, reason: str) -> CanaryDecision:
        return CanaryDecision(
            verdict, p_worse=p_worse, canary_rate=c_rate, active_rate=a_rate, canary_events=canary.n, reason=reason
        )

    if canary.n < policy.min_events:
        return decision(CanaryVerdict.CONTINUE, f"{canary.n} < {policy.min_events} events on the canary")
    if p_worse >= policy.confidence:
        return decision(CanaryVerdict.ROLLBACK, f"canary worse with p={p_worse:.3f}: {rates}")
    if 1 - p_worse >= policy.confidence:
        return decision(CanaryVerdict.PROMOTE, f"canary no worse with p={1 - p_worse:.3f}: {rates}")
    if canary.n >= policy.max_events:
        # out of budget and still unsure: keep what is known to work
        return decision(CanaryVerdict.ROLLBACK, f"undecided after {canary.n} events (p_worse={p_worse:.3f}): {rates}")
    return decision(CanaryVerdict.CONTINUE, f"undecided (p_worse={p_worse:.3f}): {rates}")
