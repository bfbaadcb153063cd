"""Pair building: edits, comparisons (weighted, ties dropped), ratings up over down, the rest unpaired."""

from curation.pairs import build_pairs
from curation.settings import Policy
from support.items import make

P = Policy()
W = {"a": 0.9, "b": 0.8, "c": 0.6}.get


def weight(user):
    return W(user, 0.7)


def test_edit_gives_edited_over_response_with_lineage():
    e = make("edit", user="a", response="Settings > Security.", edited="Thanks! Open Settings, then Security.")
    pairs, unpaired = build_pairs([e], weight, P)
    assert unpaired == [] and len(pairs) == 1
    j = pairs[0].to_json()
    assert j["chosen"] == [{"role": "assistant", "content": "Thanks! Open Settings, then Security."}]
    assert j["rejected"] == [{"role": "assistant", "content": "Settings > Security."}]
    assert j["prompt"] == [{"role": "user", "content": e.prompt[0][1]}]
    assert j["event_ids"] == [e.event_id] and j["weight"] == 0.9 and j["dimension"] == "helpfulness"


def test_comparisons_aggregate_with_weights_and_ties_give_nothing():
    r = ("Polite and short.", "Curt.")
    votes = [
        make("comparison", user="a", responses=r, chosen=0),
        make("comparison", user="b", responses=r[::-1], chosen=0),
        make("comparison", user="c", responses=r, chosen=0),
    ]
    pairs, _ = build_pairs(votes, weight, P)
    assert len(pairs) == 1
    p = pairs[0]
    assert p.chosen == "Polite and short." and p.rejected == "Curt." and len(p.event_ids) == 3
    assert abs(p.weight - (0.9 + 0.6 - 0.8) / 3) < 1e-6
    tie = make("comparison", user="a", responses=("x", "y"), chosen=None)
    assert build_pairs([tie], weight, P) == ([], [])


def test_ratings_pair_up_over_down_and_the_rest_is_unpaired():
    up = make(user="a", prompt="q1", response="Good answer.", rating="up")
    down = make(user="b", prompt="q1", response="Bad answer.", rating="down")
    lonely = make(user="c", prompt="q2", response="Only answer.", rating="down")
    pairs, unpaired = build_pairs([up, down, lonely], weight, P)
    assert [(p.chosen, p.rejected) for p in pairs] == [("Good answer.", "Bad answer.")]
    assert sorted(pairs[0].event_ids) == sorted([up.event_id, down.event_id])
    assert len(unpaired) == 1 and unpaired[0].label is False and unpaired[0].event_ids == (lonely.event_id,)
    j = unpaired[0].to_json()
    assert j["completion"] == [{"role": "assistant", "content": "Only answer."}] and j["weight"] == 0.6


def test_conflicting_votes_that_cancel_teach_nothing_and_refusals_are_safety():
    a = make(user="x", prompt="q", response="Answer.", rating="up")
    b = make(user="y", prompt="q", response="Answer.", rating="down")
    assert build_pairs([a, b], weight, P) == ([], [])
    e = make("edit", user="a", response="Sure, here is how.", edited="I'm sorry, but I can't help with that.")
    assert build_pairs([e], weight, P)[0][0].dimension == "safety"
