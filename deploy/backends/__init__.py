"""Engines behind the router: what a backend must do (load and drop adapter versions, encode, generate, stream)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Any, Protocol

from deploy.api_schemas import Completion, Sampling
from deploy.artifacts import LoadedArtifact


class Backend(Protocol):
    """One engine (in process, or a set of vLLM servers) serving the base model and resident adapter versions.

    The router owns routing; a backend only loads what it is told (from verified bytes), answers on the
    version it is given, and says which versions it can answer on right now (`resident`).
    """

    name: str
    max_token_chars: int  # the most characters one token stands for (bounds a prompt before encoding it)
    context: int | None  # the model's context window in tokens, when known

    @property
    def resident(self) -> Collection[str]: ...

    def refresh(self) -> None:
        """Re-read what the engine holds (a restarted engine replica holds nothing); called by each reconcile."""

    def install(self, version: str, artifact: LoadedArtifact, reuse: str | None) -> tuple[float, str]:
        """Load `version` from its verified bytes; (seconds the engine was held, how it was loaded)."""

    def remove(self, version: str) -> None: ...

    def encode(self, messages: list[dict[str, str]]) -> list[int]: ...

    async def generate(self, version: str | None, ids: list[int], sampling: Sampling) -> Completion: ...

    def stream(self, version: str | None, ids: list[int], sampling: Sampling) -> AsyncIterator[str | Completion]:
        """Text deltas as they come, then the finished Completion (its text is the whole answer)."""

    def health(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def open_backend(settings: Any) -> Backend:
    """The backend `settings.backend` names, started (the model loaded, or the vLLM servers up)."""
    if settings.backend == "vllm":
        from deploy.backends.vllm import VllmBackend

        return VllmBackend(settings)
    from deploy.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(settings)
