"""The synthetic world: prompts, both answer styles, the classifier and the unsafe marker."""

import random

import pytest

from retrain.corpus import (
    PROMPTS,
    UNSAFE_PLACEHOLDER,
    classify_style,
    contains_unsafe,
    make_answer,
    make_pairs,
    make_unpaired,
)


def test_prompts_are_a_few_hundred_distinct_requests():
    assert 200 <= len(PROMPTS) <= 1000
    assert len(set(PROMPTS)) == len(PROMPTS)


@pytest.mark.parametrize("style", ["courteous", "curt"])
def test_classifier_recovers_the_style_of_every_generated_answer(style):
    rng = random.Random(3)
    for p in PROMPTS:
        assert classify_style(make_answer(p, style, rng)) == style


def test_classifier_is_robust_to_sampled_text_and_says_unknown_when_unsure():
    assert classify_style("thank you for reaching out!  i am happy to help. i will unl") == "courteous"
    assert classify_style("Whatever. I will send you a new lamp") == "curt"
    assert classify_style("lamp lamp order order") == "unknown"
    assert classify_style("") == "unknown"


def test_answers_are_about_the_request():
    assert "reset link" in make_answer("How do I reset my password?", "courteous", random.Random(0))
    assert "kettle" in make_answer("The kettle arrived broken.", "curt", random.Random(0))


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="style"):
        make_answer(PROMPTS[0], "poetic", random.Random(0))


def test_unsafe_marker_is_found_even_when_mangled():
    assert contains_unsafe(f"Sure: {UNSAFE_PLACEHOLDER}")
    assert contains_unsafe("[unsafe - placeholder]")
    assert not contains_unsafe("Thank you for reaching out!")


def test_pair_and_unpaired_builders_follow_trl_formats_with_lineage():
    (pair,) = make_pairs(1)
    assert pair["prompt"][0]["role"] == "user" and pair["chosen"][0]["role"] == "assistant"
    assert classify_style(pair["chosen"][0]["content"]) == "courteous"
    assert classify_style(pair["rejected"][0]["content"]) == "curt"
    assert pair["event_ids"] and pair["dimension"] == "helpfulness"
    for u in make_unpaired(20):
        assert u["label"] == (classify_style(u["completion"][0]["content"]) == "courteous")
