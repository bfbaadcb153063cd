"""The official `openai` client against the router over real HTTP, on each backend: plain and streamed calls, stop,
top_p, seed, n=1, models.list(), and a 400 naming the field for what is not supported."""

from __future__ import annotations

import pytest

from deploy import registry
from support.models import PROMPT, wait_for

pytestmark = [pytest.mark.redis]


@pytest.fixture(params=["embedded", "vllm"])
def router(request, deploy_env):
    """(openai client, base URL, backend) for a router on one backend; the vLLM servers are shared per session."""
    import openai

    from deploy.serving import create_app
    from support.servers import serve_in_thread

    update = {"model_name": "tiny", "max_queue_per_key": deploy_env.settings.max_queue}
    if request.param == "vllm":
        update.update(request.getfixturevalue("vllm_servers").router_settings())
    settings = deploy_env.settings.model_copy(update=update)
    key = deploy_env.serving_key("tests", rate_per_s=1000, burst=1000)
    with serve_in_thread(create_app(settings)) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120), url, request.param


def _greedy(client, **kw) -> str:
    out = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=16, temperature=0, **kw)
    return out.choices[0].message.content


def test_plain_call_names_the_version_and_carries_a_feedback_token(router):
    client, _, _ = router
    out = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=12, temperature=0, n=1)
    assert out.object == "chat.completion" and out.model == "tiny"
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content
    assert out.usage.completion_tokens <= 12 and out.choices[0].finish_reason in ("stop", "length")
    extra = out.model_extra
    assert extra["adapter_version"] is None and extra["response_id"] == out.id and extra["feedback_token"]


def test_streamed_call_gives_the_same_answer_in_chunks_each_naming_the_version(router, deploy_env):
    client, _, _ = router
    deploy_env.register("v1")
    deploy_env.move(registry.promote, "v1")
    wait_for(lambda: client.models.list().data[-1].id == "v1", timeout=30, interval=0.1)
    whole = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=16, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=PROMPT,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert {c.model_extra["adapter_version"] for c in chunks} == {"v1"}
    assert len({c.id for c in chunks}) == 1 and len({c.model_extra["feedback_token"] for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_ends_the_answer_before_the_first_stop_sequence(router):
    client, _, _ = router
    kw = {"model": "tiny", "messages": PROMPT, "max_tokens": 24, "temperature": 1.0, "seed": 11}
    text = client.chat.completions.create(**kw).choices[0].message.content
    stop = next(text[k : k + 2] for k in range(1, len(text) - 2) if text.find(text[k : k + 2]) > 0)
    cut = text.find(stop)
    out = client.chat.completions.create(**kw, stop=[stop, "never-in-the-answer"])
    assert (out.choices[0].message.content, out.choices[0].finish_reason) == (text[:cut], "stop")
    streamed = client.chat.completions.create(**kw, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text[:cut]


def test_seed_repeats_and_a_tiny_top_p_samples_the_greedy_answer(router):
    client, _, _ = router

    def sample(**kw) -> str:
        out = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=16, temperature=1.0, **kw)
        return out.choices[0].message.content

    assert sample(seed=7) == sample(seed=7)
    assert len({sample(seed=s) for s in (1, 2, 3, 4)}) > 1  # sampling at temperature 1 differs by seed
    greedy = _greedy(client)
    assert {sample(seed=s, top_p=1e-6) for s in (1, 2, 3)} == {greedy}  # only the likeliest token survives


def test_models_list_names_the_base_and_the_served_versions(router, deploy_env):
    client, _, _ = router
    assert [m.id for m in client.models.list().data] == ["tiny"]
    deploy_env.register("v1", "v2")
    deploy_env.move(registry.promote, "v1")
    deploy_env.move(registry.start_canary, "v2", 0.5)
    wait_for(lambda: len(client.models.list().data) == 3, timeout=30, interval=0.1)
    listed = client.models.list().data
    assert [(m.id, m.model_extra["role"]) for m in listed] == [("tiny", "base"), ("v1", "active"), ("v2", "canary")]
    answer = client.chat.completions.create(model="v2", messages=PROMPT, max_tokens=4, user="anyone")
    assert answer.model_extra["adapter_version"] == "v2"  # a served version asked by name answers itself


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
    ],
)
def test_what_is_not_supported_is_a_400_naming_the_field(router, kw, field):
    import openai

    client, _, _ = router
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=4, **kw)
    assert err.value.status_code == 400 and err.value.body["param"] == field
    assert err.value.body["message"].startswith(f"`{field}`")
