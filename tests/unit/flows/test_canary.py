"""The canary decision on counts alone."""

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.canary import ArmStats, CanaryPolicy, CanaryVerdict, decide_canary

POLICY = CanaryPolicy(min_events=30, max_events=1000, tolerance=0.02, confidence=0.95, samples=4000)


def test_waits_for_the_minimum():
    d = decide_canary(ArmStats(5, 0), ArmStats(50, 50), POLICY)
    assert d.verdict is CanaryVerdict.CONTINUE and "< 30" in d.reason


def test_clearly_worse_canary_is_rolled_back():
    d = decide_canary(ArmStats(20, 60), ArmStats(300, 100), POLICY)
    assert d.verdict is CanaryVerdict.ROLLBACK and d.p_worse > 0.95


def test_clearly_better_canary_is_promoted():
    d = decide_canary(ArmStats(70, 10), ArmStats(200, 200), POLICY)
    assert d.verdict is CanaryVerdict.PROMOTE


def test_equal_rates_keep_watching_then_roll_back_out_of_budget():
    small = decide_canary(ArmStats(25, 25), ArmStats(25, 25), POLICY)
    assert small.verdict is CanaryVerdict.CONTINUE
    spent = decide_canary(ArmStats(500, 500), ArmStats(500, 500), POLICY.model_copy(update={"max_events": 1000}))
    assert spent.verdict is CanaryVerdict.ROLLBACK and "undecided after" in spent.reason


def test_edits_count_as_failures():
    assert ArmStats.from_feedback({"up": 3, "down": 1, "edits": 2}) == ArmStats(3, 3)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300), st.integers(0, 300), st.integers(0, 300), st.integers(0, 300))
def test_deterministic_and_monotone_in_canary_successes(cs, cf, as_, af):
    a = ArmStats(as_, af)
    d1 = decide_canary(ArmStats(cs, cf), a, POLICY, seed=1)
    assert d1 == decide_canary(ArmStats(cs, cf), a, POLICY, seed=1)
    better = decide_canary(ArmStats(cs + 50, cf), a, POLICY, seed=1)
    assert better.p_worse <= d1.p_worse + 0.03  # Monte Carlo noise only
    assert 0.0 <= d1.p_worse <= 1.0
