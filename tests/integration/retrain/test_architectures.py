"""Any Hugging Face causal LM through the loop: tiny random Llama, Qwen2, Mistral and GPT-NeoX bases (built here,
each with its family's chat template) are trained (real TRL/PEFT), evaluated, and served by each serving backend."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from support.architectures import build_tiny_causal_lm

pytestmark = [pytest.mark.slow]

# the last: a base whose tokenizer has no chat template, trained and served with alignloop's fallback
ARCHITECTURES = ["llama", "qwen2", "mistral", "gpt_neox", "gpt_neox-no-template"]
PEFT_TARGETS = {
    "llama": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
}
# the serving backends the four architectures must pass on, each with a context manager below (BACKEND_CLIENTS)
# that yields an HTTP client of its OpenAI-compatible router, the adapter active; the vLLM one fails (never skips)
# when the vLLM environment is missing
BACKENDS = [pytest.param("embedded", marks=pytest.mark.redis), pytest.param("vllm", marks=pytest.mark.redis)]
PROMPT = [{"role": "user", "content": "Where is my parcel? It is late."}]
# small and quick: the point is that every architecture goes through, not how well a random model learns
CONFIG = {
    "snapshot": {"min_train_pairs": 8, "min_heldout_pairs": 2, "heldout_fraction": 0.2},
    "lora": {"r": 8, "alpha": 16},
    "dpo": {
        "epochs": 2,
        "batch_size": 8,
        "learning_rate": 0.01,
        "max_length": 96,
        "warmup_steps": 1,
        "cache_ref_log_probs": False,
    },
    "kto": {"enabled": False},
    "eval": {"samples": 6, "kl_probes": 4, "max_new_tokens": 8},
}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def trained(request, tmp_path_factory) -> dict:
    """One architecture: base built, snapshot taken, adapter trained and evaluated against the base."""
    from retrain.corpus import make_pairs
    from retrain.evaluate import evaluate
    from retrain.snapshot import build_snapshot
    from retrain.train import train_adapter

    arch, _, variant = request.param.partition("-")
    tmp = tmp_path_factory.mktemp(request.param)
    base = build_tiny_causal_lm(tmp / "base", arch, chat_template=variant != "no-template")
    snap = build_snapshot(make_pairs(56, seed=3), [], CONFIG["snapshot"])
    adapter = train_adapter(base, snap, CONFIG, tmp / "adapters", progress=False)
    report = evaluate(base, adapter, snap, config=CONFIG, report_dir=tmp / "report", progress=False)
    return {"arch": arch, "base": base, "adapter": adapter, "snapshot": snap, "report": report, "tmp": tmp}


def test_trains_with_the_architectures_lora_targets_and_evaluates(trained):
    from retrain.train import load_verified_manifest

    manifest = load_verified_manifest(trained["adapter"])
    adapter_cfg = json.loads((trained["adapter"] / "adapter_config.json").read_text())
    assert sorted(adapter_cfg["target_modules"]) == PEFT_TARGETS[trained["arch"]]
    assert manifest.base_model == str(trained["base"]) and manifest.metrics["device"] == "cpu"
    models, comp = trained["report"].models, trained["report"].comparisons
    # what training did shows on held-out pairs: the SFT term lifts the chosen answers' likelihood, and the
    # DPO term moves the implicit reward towards them
    candidate_logp, base_logp = models["candidate"].heldout.chosen_logp_mean, models["base"].heldout.chosen_logp_mean
    assert candidate_logp is not None and base_logp is not None and candidate_logp > base_logp
    assert comp.heldout_margin is not None and comp.heldout_margin > 0
    assert comp.kl_to_base is not None and comp.kl_to_base > 0
    assert (trained["tmp"] / "report" / "report.json").is_file()


def _deploy_settings(base: Path, redis_url: str, tmp: Path, **backend: object):
    from deploy.settings import DeploySettings

    return DeploySettings(
        artifact_root=tmp / "artifacts",
        store_url=f"sqlite:///{tmp / 'registry.db'}",
        redis_url=redis_url,
        control_channel=f"test:arch:{uuid.uuid4().hex}",
        base_model=str(base),
        torch_threads=1,
        replica_id="arch-test",
        max_resident=2,
        key_cache_s=0.0,
        admin_token_cache_s=0.0,
        **backend,
    )


@contextmanager
def _promoted(settings, adapter: Path) -> Iterator[str]:
    """A registry (SQLite) with `adapter` registered and promoted; yields a serving key for it."""
    from alignloop.core.db import open_store, session_scope
    from deploy import registry
    from deploy.artifacts import LocalArtifactStorage
    from deploy.keys import create_serving_key

    engine = open_store(settings.store_url)
    storage = LocalArtifactStorage(settings.artifact_root)
    try:
        with session_scope(engine) as s:
            version = registry.register_adapter(s, adapter, actor="tester", reason="test", storage=storage).version
            registry.promote(s, version, actor="tester", reason="test", storage=storage)
            key = create_serving_key(s, "arch", created_by="tester")[1]
        yield key
    finally:
        engine.dispose()


@contextmanager
def embedded_backend(base: Path, adapter: Path, redis_url: str, tmp: Path) -> Iterator:
    """alignloop's own serving (one replica in process), with `adapter` registered and promoted."""
    from fastapi.testclient import TestClient

    from deploy.serving import create_app

    settings = _deploy_settings(base, redis_url, tmp)
    with (
        _promoted(settings, adapter) as key,
        TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client,
    ):
        yield client


@contextmanager
def vllm_backend(base: Path, adapter: Path, redis_url: str, tmp: Path) -> Iterator:
    """alignloop's router on the vLLM backend, which starts one vLLM server on `base` itself (as `alignloop deploy
    serve --backend vllm` does) and loads the promoted `adapter` on it; an HTTP client of the router."""
    import httpx

    from deploy.serving import create_app
    from deploy.vllm_env import vllm_env_ready
    from support.ports import free_port

    settings = _deploy_settings(
        base,
        redis_url,
        tmp,
        backend="vllm",
        vllm_port=free_port(),
        vllm_replicas=1,
        vllm_lora_root=tmp / "vllm-loras",
        vllm_start_timeout_s=900.0,
    )
    python = settings.resolved_vllm_python()
    if not vllm_env_ready(python):
        pytest.fail(
            f"the vLLM environment is missing at {python.parent.parent}: run `alignloop deploy vllm-setup` "
            "(`./dev test` does) or point ALIGNLOOP_DEPLOY_VLLM_PYTHON at one",
            pytrace=False,
        )
    with (
        _promoted(settings, adapter) as key,
        _router(create_app(settings), tmp / "vllm-logs") as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client,
    ):
        yield client


@contextmanager
def _router(app, vllm_logs: Path) -> Iterator[str]:
    """The router served over HTTP; when it cannot start (vLLM refused the base), the failure quotes vLLM's log."""
    from support.servers import serve_in_thread

    try:
        cm = serve_in_thread(app, start_timeout=900)
        url = cm.__enter__()
    except AssertionError as exc:
        tails = [f"{p.name}: ...{p.read_text(errors='replace')[-2000:]}" for p in sorted(vllm_logs.glob("*.log"))]
        pytest.fail(f"the router on vLLM did not start: {exc}\n" + "\n".join(tails), pytrace=False)
    try:
        yield url
    finally:
        cm.__exit__(None, None, None)


BACKEND_CLIENTS = {"embedded": embedded_backend, "vllm": vllm_backend}


def _greedy_reference(base: Path, adapter: Path | None, max_new_tokens: int) -> str:
    """The greedy answer computed here with plain transformers + PEFT: the proof of which weights answered."""
    import torch

    from retrain.model import load_base
    from retrain.train import load_adapter

    model, tok = load_adapter(base, adapter) if adapter else load_base(base)
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False)
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
        )
    return tok.decode(out[0, len(ids) :], skip_special_tokens=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_trained_adapter_is_served_and_answers_with_its_weights(trained, backend, request, tmp_path):
    redis_url = request.getfixturevalue("redis_url")
    version = trained["adapter"].name
    expected = _greedy_reference(trained["base"], trained["adapter"], 10)
    assert expected != _greedy_reference(trained["base"], None, 10), "the adapter must change the greedy answer"
    with BACKEND_CLIENTS[backend](trained["base"], trained["adapter"], redis_url, tmp_path) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": PROMPT, "max_tokens": 10, "temperature": 0, "user": "u1"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
    assert body["adapter_version"] == version
    assert body["choices"][0]["message"]["content"] == expected


def test_an_architecture_without_lora_targets_is_refused_by_name_and_leaves_nothing(tmp_path):
    from retrain.corpus import make_pairs
    from retrain.errors import UnsupportedModelError
    from retrain.snapshot import build_snapshot
    from retrain.train import train_adapter

    base = build_tiny_causal_lm(tmp_path / "phi3", "phi3")
    snap = build_snapshot(make_pairs(40, seed=3), [], CONFIG["snapshot"])
    with pytest.raises(UnsupportedModelError, match=r"architecture 'phi3' \(Phi3ForCausalLM\)"):
        train_adapter(base, snap, CONFIG, tmp_path / "out", progress=False)
    assert list((tmp_path / "out").iterdir()) == []
