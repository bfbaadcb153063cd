"""The router's request shape: what an OpenAI client may send, and a field-named refusal for what is not done."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deploy.api_schemas import ChatRequest, cut_at_stop

MSG = [{"role": "user", "content": "hi"}]


def test_openai_spellings_are_accepted_and_become_one_sampling():
    req = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            "stop": ".",
            "top_p": 0.5,
            "seed": 3,
            "max_completion_tokens": 9,
            "n": 1,
            "tools": [],
            "logprobs": False,
            "presence_penalty": 0,
            "metadata": {"x": 1},
        }
    )
    assert [(m.role, m.content) for m in req.messages] == [("system", "be brief"), ("user", "ab")]
    s = req.sampling()
    assert (s.stop, s.top_p, s.seed, s.max_tokens) == ((".",), 0.5, 3, 9)


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"n": 3}, "n"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"5": 1}}, "logit_bias"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"top_p": 0}, "top_p"),
    ],
)
def test_what_is_not_supported_is_refused_naming_the_field(extra, field):
    with pytest.raises(ValidationError) as err:
        ChatRequest.model_validate({"messages": MSG, **extra})
    assert err.value.errors()[0]["loc"][0] == field


def test_image_parts_are_refused():
    with pytest.raises(ValidationError, match="only text content parts"):
        ChatRequest.model_validate({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})


@pytest.mark.parametrize(
    "text, stop, expected",
    [
        ("one. two. three", (".",), ("one", True)),
        ("one. two! three", ("!", "."), ("one", True)),
        ("abc", ("x",), ("abc", False)),
        ("abc", (), ("abc", False)),
        ("stop at start", ("stop",), ("", True)),
    ],
)
def test_cut_at_stop_keeps_the_text_before_the_first_stop_sequence(text, stop, expected):
    assert cut_at_stop(text, stop) == expected
