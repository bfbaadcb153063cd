"""Deploy fixtures: a tiny random Llama built once per session, LoRA artifacts from it, a registry on SQLite."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.models import PROMPT


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from support.models import build_tiny_base_model

    # hidden 128 over 4 heads: head size 32, the smallest vLLM's CPU attention takes, so both backends serve it
    return build_tiny_base_model(tmp_path_factory.mktemp("tiny-base") / "model", hidden=128)


@pytest.fixture(scope="session")
def adapter_factory(tiny_base):
    from support.models import AdapterFactory

    return AdapterFactory(tiny_base)


@pytest.fixture(scope="session")
def adapter_sources(adapter_factory, tmp_path_factory) -> dict[str, Path]:
    """Artifacts v1..v8 (v(n) the parent of v(n+1)), built once; tests register the ones they need."""
    root = tmp_path_factory.mktemp("adapter-src")
    return {
        f"v{i}": adapter_factory.build(root / f"v{i}", f"v{i}", seed=i, parent=f"v{i - 1}" if i > 1 else None)
        for i in range(1, 9)
    }


@pytest.fixture(scope="session")
def reference_texts(tiny_base, adapter_sources) -> dict[str | None, str]:
    """Greedy answer to PROMPT per version, computed in this process: the proof of which weights answered."""
    from deploy.artifacts import load_artifact_dir
    from deploy.runtime import ModelHost, prepare_adapter

    host = ModelHost(str(tiny_base), torch_threads=1)
    try:
        for src in adapter_sources.values():
            host.install(prepare_adapter(load_artifact_dir(src)))
        texts = {v: host.generate_future(v, PROMPT, 12, 0.0, None).result().text for v in [None, *adapter_sources]}
    finally:
        host.close()
    assert len(set(texts.values())) == len(texts), f"versions must answer differently to be told apart: {texts}"
    return texts


@dataclass
class DeployEnv:
    """One test's registry (SQLite file), artifact root and Redis db, plus the replica settings pointing at them."""

    settings: object
    engine: object
    storage: object
    sources: dict
    redis_url: str
    log: list = field(default_factory=list)

    def register(self, *versions: str) -> None:
        from alignloop.core.db import session_scope
        from deploy import registry

        with session_scope(self.engine) as s:
            for v in versions:
                registry.register_adapter(s, self.sources[v], actor="tester", reason="test", storage=self.storage)

    def move(self, fn, *args, publish: bool = True, **kwargs):
        """Run one registry move in its own transaction, then (by default) tell the replicas."""
        from alignloop.core.db import session_scope

        with session_scope(self.engine) as s:
            routing = fn(s, *args, actor="tester", reason="test", storage=self.storage, **kwargs)
        if publish:
            self.publish(routing.base_model)
        return routing

    def publish(self, base_model: str | None = None) -> float:
        from deploy.control import publish_routing_change

        t = time.perf_counter()
        publish_routing_change(
            self.redis_url, base_model or self.settings.base_model, channel=self.settings.control_channel
        )
        return t

    def admin_token(self, name: str) -> str:
        """A new admin token named `name` in this registry (the secret, shown once)."""
        from alignloop.core.db import session_scope
        from deploy.tokens import create_admin_token

        with session_scope(self.engine) as s:
            return create_admin_token(s, name, created_by="tester")[1]

    def serving_key(self, name: str = "app", **limits) -> str:
        """A new serving key for the caller `name` in this registry (the secret, shown once)."""
        from alignloop.core.db import session_scope
        from deploy.keys import create_serving_key

        with session_scope(self.engine) as s:
            return create_serving_key(s, name, created_by="tester", **limits)[1]

    def revoke_admin_token(self, name: str) -> None:
        from alignloop.core.db import session_scope
        from deploy.tokens import revoke_admin_token

        with session_scope(self.engine) as s:
            revoke_admin_token(s, name, revoked_by="tester")

    def tamper(self, version: str, name: str = "adapter_model.safetensors") -> bytes:
        p = self.storage.root / version / name
        original = p.read_bytes()
        data = bytearray(original)
        data[-1] ^= 0x01
        p.write_bytes(bytes(data))
        return original

    def restore(self, version: str, original: bytes, name: str = "adapter_model.safetensors") -> None:
        (self.storage.root / version / name).write_bytes(original)


@pytest.fixture
def deploy_env(tmp_path, redis_url, tiny_base, adapter_sources):
    from alignloop.core.db import open_store
    from deploy.artifacts import LocalArtifactStorage
    from deploy.settings import DeploySettings

    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = DeploySettings(
        artifact_root=tmp_path / "artifacts",
        store_url=store_url,
        redis_url=redis_url,
        control_channel=f"test:deploy:{tmp_path.name}",
        base_model=str(tiny_base),
        admin_token_cache_s=0.0,
        key_cache_s=0.0,
        reconcile_interval_s=30.0,
        max_resident=3,
        torch_threads=1,
        replica_id="in-process",
        # these tests decide which versions load when (LRU, refusals of tampered bytes); staging a candidate
        # ahead of its move has its own tests, which turn it on
        stage_candidates=False,
    )
    engine = open_store(store_url)
    env = DeployEnv(
        settings=settings,
        engine=engine,
        storage=LocalArtifactStorage(settings.artifact_root),
        sources=adapter_sources,
        redis_url=redis_url,
    )
    yield env
    engine.dispose()


@dataclass
class VllmServers:
    """vLLM OpenAI servers for the session (vLLM takes a minute or more to start here), attached by routers."""

    processes: list
    lora_root: Path

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.processes]

    def router_settings(self) -> dict:
        """Settings that put a router on these servers (each test's router writes its own adapter copies)."""
        import uuid

        return {"backend": "vllm", "vllm_urls": self.urls, "vllm_lora_root": self.lora_root / uuid.uuid4().hex[:8]}


def start_vllm_servers(base_model: Path, count: int, log_dir: Path) -> list:
    """`count` vLLM servers on the base; fails (never skips) with the fix when the vLLM environment is missing."""
    from deploy.settings import DeploySettings
    from deploy.vllm_env import VllmLaunch, start_vllm, vllm_env_ready
    from support.ports import free_port

    python = DeploySettings().resolved_vllm_python()
    if not vllm_env_ready(python):
        pytest.fail(
            f"the vLLM environment is missing at {python.parent.parent}: run `alignloop deploy vllm-setup` "
            "(`./dev test` does) or point ALIGNLOOP_DEPLOY_VLLM_PYTHON at one",
            pytrace=False,
        )
    launch = VllmLaunch(python=python, base_model=str(base_model), max_model_len=512, max_loras=5, threads=1)
    return [start_vllm(launch, free_port(), log_dir) for _ in range(count)]


@pytest.fixture(scope="session")
def vllm_servers(tiny_base, tmp_path_factory):
    from deploy.vllm_env import wait_vllm_ready

    root = tmp_path_factory.mktemp("vllm")
    procs = start_vllm_servers(tiny_base, 2, root / "logs")
    try:
        wait_vllm_ready(procs, timeout=900)
        yield VllmServers(processes=procs, lora_root=root / "loras")
    finally:
        for p in procs:
            p.stop()
