"""What a turn builds on and trains on: the plan from the registry's state, and the record selection (pure)."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from alignloop.core.contracts import TurnRecord
from flows.turns import TurnPlan, VersionView, plan_turn
from retrain.snapshot import select_turn_records

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _view(name, parent=None, status="retired", until=None, ids=()):
    turn = TurnRecord(until=until) if until else None
    return VersionView(version=name, parent_version=parent, status=status, turn=turn, trained_event_ids=frozenset(ids))


def test_first_turn_on_the_base_takes_everything_and_replays_nothing():
    plan = plan_turn(None, None, [])
    assert plan == TurnPlan(parent=None, canary=None, since=None, replay_ids=frozenset(), previous_turn=None)
    assert plan.blocked_reason is None


def test_a_live_canary_blocks_the_turn_with_a_reason():
    plan = plan_turn("a1", "a2", [_view("a1", until=T0), _view("a2", "a1", "canary", T0 + timedelta(hours=1))])
    assert plan.blocked_reason and "a2" in plan.blocked_reason and "never two canaries" in plan.blocked_reason


def test_new_data_starts_at_the_newest_turn_mark_even_when_that_turn_was_rejected():
    versions = [
        _view("a1", until=T0, ids={"e1", "e2"}, status="active"),
        _view("a2", "a1", "rejected", T0 + timedelta(hours=2), ids={"e3"}),
    ]
    plan = plan_turn("a1", None, versions)
    assert plan.since == T0 + timedelta(hours=2) and plan.previous_turn == "a2"
    assert plan.replay_ids == {"e1", "e2"}  # what the active adapter learned, not the rejected turn's data


def test_replay_follows_the_active_adapters_whole_chain_of_parents():
    versions = [
        _view("a1", ids={"e1"}, until=T0),
        _view("a2", "a1", ids={"e2"}, until=T0 + timedelta(hours=1)),
        _view("a3", "a2", "active", T0 + timedelta(hours=2), ids={"e3"}),
        _view("x", None, "rolled_back", T0 - timedelta(hours=1), ids={"e9"}),
    ]
    assert plan_turn("a3", None, versions).replay_ids == {"e1", "e2", "e3"}


def test_versions_from_before_turns_existed_leave_the_window_open():
    assert plan_turn("old", None, [_view("old", status="active", ids={"e1"})]).since is None


def _rec(i, when, ids):
    return {
        "prompt": [{"role": "user", "content": f"p{i}"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
        "weight": 1.0,
        "event_ids": list(ids),
        "created_at": when.isoformat(),
    }


def test_selection_is_the_new_records_plus_the_newest_learned_ones_up_to_the_bound():
    old = [_rec(i, T0 + timedelta(minutes=i), [f"o{i}"]) for i in range(10)]
    new = [_rec(100 + i, T0 + timedelta(hours=2, minutes=i), [f"n{i}"]) for i in range(5)]
    learned = {f"o{i}" for i in range(0, 10, 2)}  # the active adapter trained on the even ones
    sel = select_turn_records(old + new, [], since=T0 + timedelta(hours=1), replay_ids=learned, replay_max=3)
    assert sel.new_pairs == 5 and sel.replay_pairs == 3
    assert [r["event_ids"][0] for r in sel.pairs[:3]] == ["o8", "o6", "o4"]  # newest learned first
    assert sel.until == T0 + timedelta(hours=2, minutes=4, microseconds=1)
    assert sel.as_dict()["since"] == (T0 + timedelta(hours=1)).isoformat()


@given(st.lists(st.integers(0, 500), max_size=40), st.integers(0, 500), st.integers(0, 10))
def test_selection_never_loses_or_repeats_a_new_record(minutes, cut, replay_max):
    recs = [_rec(i, T0 + timedelta(minutes=m), [f"e{i}"]) for i, m in enumerate(minutes)]
    since = T0 + timedelta(minutes=cut)
    sel = select_turn_records(
        recs, [], since=since, replay_ids={f"e{i}" for i in range(len(recs))}, replay_max=replay_max
    )
    new_ids = {r["event_ids"][0] for r in recs if datetime.fromisoformat(r["created_at"]) >= since}
    picked = [r["event_ids"][0] for r in sel.pairs]
    assert len(picked) == len(set(picked)) and new_ids <= set(picked)
    assert sel.replay_pairs == len(picked) - len(new_ids) <= replay_max
    # the next turn's window starts after every record this one took as new
    assert all(datetime.fromisoformat(r["created_at"]) < sel.until for r in recs if r["event_ids"][0] in new_ids)
