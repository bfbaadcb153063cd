"""The embedded engine: transformers generate in this process (deploy.runtime.ModelHost), the default backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from typing import Any

from deploy.api_schemas import Completion, Sampling, cut_at_stop
from deploy.artifacts import LoadedArtifact
from deploy.settings import DeploySettings


class EmbeddedBackend:
    name = "embedded"

    def __init__(self, settings: DeploySettings) -> None:
        from deploy.runtime import ModelHost

        assert settings.base_model is not None  # the router checked
        self.host = ModelHost(settings.base_model, device=settings.device, torch_threads=settings.torch_threads)
        self.max_token_chars = self.host.max_token_chars
        self.context: int | None = getattr(self.host.base.config, "max_position_embeddings", None)

    @property
    def resident(self) -> Collection[str]:
        return self.host.resident

    def refresh(self) -> None:
        return None  # the host is this process: it holds what it was given

    def install(self, version: str, artifact: LoadedArtifact, reuse: str | None) -> tuple[float, str]:
        from deploy.runtime import prepare_adapter

        held = self.host.install(prepare_adapter(artifact), reuse=reuse)
        return held, self.host.last_install_mode

    def remove(self, version: str) -> None:
        self.host.remove(version)

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        return self.host.encode(messages)

    async def generate(self, version: str | None, ids: list[int], sampling: Sampling) -> Completion:
        fut = self.host.generate_future(
            version, ids, sampling.max_tokens, sampling.temperature, sampling.seed, sampling.top_p
        )
        out = await asyncio.wrap_future(fut)  # cancelled (a timeout): dropped from the queue if not started
        text, stopped = cut_at_stop(out.text, sampling.stop)
        if not stopped:
            return out
        # the tokens past the stop sequence were generated but are not the answer; count what is returned
        kept = len(self.host.tokenizer.encode(text, add_special_tokens=False)) if text else 0
        return Completion(
            text=text,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=min(kept, out.completion_tokens),
            finish_reason="stop",
        )

    async def stream(self, version: str | None, ids: list[int], sampling: Sampling) -> AsyncIterator[str | Completion]:
        # the host batches whole generations (its throughput comes from that), so the answer streams as one delta
        out = await self.generate(version, ids, sampling)
        if out.text:
            yield out.text
        yield out

    def health(self) -> dict[str, Any]:
        return {"engine": self.name, "batches": dict(self.host.batch_stats)}

    def close(self) -> None:
        self.host.close()
