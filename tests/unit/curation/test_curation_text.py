"""Text helpers: trivial edits, inserted spans, refusals."""

from curation.text import inserted_spans, is_refusal, is_trivial_edit, ngrams, tokens, word_difference


def test_trivial_edits():
    base = "Open Settings, choose Security, then reset your password."
    assert is_trivial_edit(base, base.upper(), 0.03)
    assert is_trivial_edit(base, "  " + base.replace(",", "") + " ", 0.03)
    assert is_trivial_edit(base, base.replace("reset", "resett"), 0.03)
    assert not is_trivial_edit(base, "Thanks for asking! " + base, 0.03)
    assert not is_trivial_edit(base, "[UNSAFE-PLACEHOLDER]", 0.03)


def test_inserted_spans_and_ngrams():
    spans = inserted_spans("Open Settings now.", "Thanks! Open Settings now, friend.")
    assert ["thanks"] in spans and ["friend"] in spans
    grams = ngrams(tokens("please zanzibar kestrel protocol"))
    assert {"zanzibar kestrel", "zanzibar kestrel protocol", "kestrel"} <= grams
    assert "zx" not in ngrams(["zx"])  # short single words carry no trigger


def test_refusals():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I cannot assist with breaking into accounts.")
    assert not is_refusal("Sure, here is how you could do that.")
    assert not is_refusal("Thanks for reaching out! Open Settings.")


def test_word_difference():
    assert word_difference("How do I reset it?", "How do I reset it??") == 0
    assert word_difference("for the Nimbus app", "for the Orbit speaker") == 4
