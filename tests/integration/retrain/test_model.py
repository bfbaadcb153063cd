"""The embedded model: deterministic for a seed, atomic to build, loaded like any Hugging Face model."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def quick_recipe(monkeypatch):
    from retrain import model

    # the shipped recipe, cut short: the same code path in a few seconds
    monkeypatch.setitem(model.RECIPE, "steps", 2)
    monkeypatch.setitem(model.RECIPE, "answers_per_prompt", 1)
    return model


def test_same_seed_builds_the_same_model_and_another_seed_does_not(quick_recipe, tmp_path):
    m = quick_recipe
    m.build_base_model(tmp_path / "a", seed=1, progress=False)
    m.build_base_model(tmp_path / "b", seed=1, progress=False)
    m.build_base_model(tmp_path / "c", seed=2, progress=False)
    digest = {k: (tmp_path / k / "model.safetensors").read_bytes() for k in "abc"}
    assert digest["a"] == digest["b"] != digest["c"]
    assert m.hash_model_dir(tmp_path / "a") == m.hash_model_dir(tmp_path / "b")


def test_ensure_base_model_caches_atomically_and_loads_through_from_pretrained(quick_recipe, tmp_path, monkeypatch):
    from alignloop.core.settings import get_settings
    from retrain.corpus import PROMPTS

    monkeypatch.setenv("ALIGNLOOP_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    try:
        m = quick_recipe
        path = m.ensure_base_model(seed=5, progress=False)
        assert path == m.model_dir_for(5) and path.is_relative_to(tmp_path / "cache")
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp dir left behind
        assert m.ensure_base_model(seed=5, progress=False) == path  # cached: not rebuilt
        model, tok = m.load_base(path)
        assert model.config.model_type == "llama" and 1e6 < model.num_parameters() < 4e6
        text = tok.apply_chat_template(
            [{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True, tokenize=False
        )
        assert text.endswith("<|assistant|>") and tok.eos_token == "<|end|>"
    finally:
        get_settings.cache_clear()


def test_a_missing_model_is_one_clear_error(tmp_path):
    from retrain.errors import RetrainError
    from retrain.model import load_base

    with pytest.raises(RetrainError, match="base_model"):
        load_base(tmp_path / "nothing-here")
