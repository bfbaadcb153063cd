"""The vLLM backend: one or more vLLM OpenAI servers (started here or attached), driven from the registry.

Each adapter version loads under its own LoRA name (version@sha), from a copy written from the verified bytes to
a directory of that server's own, on every server, before the router flips; retired names are unloaded, never
reloaded in place (vLLM serves stale prefix-cache entries for a name reloaded in place). `refresh` re-reads what
each server holds, so a restarted server (which holds nothing) gets its adapters back on the next reconcile.
Requests go to the least busy server that holds the version; one that fails in transport is retried on another.
Control calls (list, load, unload) go to all servers at once, so a move costs the slowest server, not their sum.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from deploy.api_schemas import Completion, Sampling
from deploy.artifacts import MANIFEST, LoadedArtifact
from deploy.errors import EngineError, ServingError
from deploy.settings import DeploySettings

log = logging.getLogger(__name__)
BASE_NAME = "base"  # the served model name of the base on every server alignloop starts
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_OURS = re.compile(r".+@[0-9a-f]{12}")  # the LoRA names alignloop gives: version@manifest sha256 prefix


@dataclass
class EngineServer:
    """One vLLM server as the router sees it: reachable or not, which versions it holds under which names."""

    url: str
    lora_dir: Path
    up: bool = True
    loaded: dict[str, str] = field(default_factory=dict)  # version -> LoRA name
    in_flight: int = 0
    process: Any = None  # a VllmProcess when alignloop started it
    changes: int = 0  # bumped by each load, unload or failure: a listing begun before one is out of date


class VllmBackend:
    name = "vllm"

    def __init__(self, settings: DeploySettings) -> None:
        from transformers import AutoTokenizer

        from deploy.runtime import ensure_chat_template

        assert settings.base_model is not None  # the router checked
        self.settings = settings
        config = json.loads((Path(settings.base_model) / "config.json").read_text())
        self.context: int | None = settings.vllm_max_model_len or config.get("max_position_embeddings")
        self.tokenizer = AutoTokenizer.from_pretrained(settings.base_model)
        ensure_chat_template(self.tokenizer, settings.base_model)
        self.max_token_chars = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        self.servers = self._open_servers()
        self._names: dict[str, str] = {}  # version -> LoRA name, for what this router loaded
        self._lock = threading.Lock()  # server state, between reconcile (a thread) and requests (the loop)
        self._control = httpx.Client(timeout=httpx.Timeout(30.0, connect=2.0))
        self._fan = ThreadPoolExecutor(max_workers=len(self.servers), thread_name_prefix="vllm-control")
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._turn = itertools.count()

    def _open_servers(self) -> list[EngineServer]:
        from deploy.vllm_env import VllmLaunch, start_vllm, wait_vllm_ready

        s = self.settings
        root = s.resolved_vllm_lora_root()
        if s.vllm_urls:
            return [EngineServer(url=u.rstrip("/"), lora_dir=root / _dir_name(u)) for u in s.vllm_urls]
        launch = VllmLaunch(
            python=s.resolved_vllm_python(),
            base_model=str(s.base_model),
            max_model_len=int(self.context or 2048),
            max_lora_rank=s.vllm_max_lora_rank,
            max_loras=s.max_resident + 1,
            kv_cache_gb=s.vllm_kv_cache_gb,
            threads=s.vllm_threads,
        )
        procs = [start_vllm(launch, s.vllm_port + i, root.parent / "vllm-logs") for i in range(s.vllm_replicas)]
        try:
            wait_vllm_ready(procs, s.vllm_start_timeout_s)
        except BaseException:
            for p in procs:
                p.stop()
            raise
        return [EngineServer(url=p.url, lora_dir=root / _dir_name(p.url), process=p) for p in procs]

    # ------------------------------------------------------------ what the servers hold (reconcile thread)
    @property
    def resident(self) -> Collection[str]:
        """Versions every reachable server holds (with none reachable: nothing)."""
        with self._lock:
            up = [s.loaded.keys() for s in self.servers if s.up]
        return set.intersection(*map(set, up)) if up else set()

    def _each(self, fn: Callable[[EngineServer], None], servers: list[EngineServer]) -> None:
        """`fn` on every server at once; the first error (in server order) is raised once all have finished."""
        for _ in self._fan.map(fn, servers):
            pass

    def refresh(self) -> None:
        """List what each server holds; safe beside install and remove (a list that a load or unload on the same
        server overtook is dropped: what that load or unload did is newer)."""
        self._each(self._refresh_one, self.servers)

    def _refresh_one(self, server: EngineServer) -> None:
        with self._lock:
            seen = server.changes
        try:
            listed = self._control.get(f"{server.url}/v1/models", timeout=2.0).json()["data"]
        except (httpx.HTTPError, KeyError, ValueError):
            with self._lock:
                if server.changes == seen:
                    self._down(server)
            return
        names = {m["id"] for m in listed if m["id"] != BASE_NAME}
        with self._lock:
            if server.changes != seen:
                return
            by_name = {n: v for v, n in self._names.items()}
            server.up = True
            server.loaded = {by_name[n]: n for n in names if n in by_name}
        for stale in names - by_name.keys():
            if _OURS.fullmatch(stale):  # an earlier router's: not verified by this one; others' are left alone
                self._post(server, "unload_lora_adapter", {"lora_name": stale})

    @staticmethod
    def _down(server: EngineServer) -> None:
        """Under `_lock`: the server is unreachable; what it held is loaded again once it answers."""
        server.up, server.loaded = False, {}
        server.changes += 1

    def install(self, version: str, artifact: LoadedArtifact, reuse: str | None) -> tuple[float, str]:
        """Write the verified bytes to each server's own directory and load them there; all reachable servers or
        an error (the router then keeps serving what it serves)."""
        name = f"{version}@{artifact.manifest_sha256[:12]}"
        t0 = time.perf_counter()
        if reuse is not None:  # the engine is full: free the spare's LoRA slot first (nothing routes to it)
            self.remove(reuse)
        with self._lock:
            self._names[version] = name  # before the load: a listing that sees the name knows it is ours
            targets = [s for s in self.servers if s.up and version not in s.loaded]
            for server in targets:
                server.changes += 1

        def load(server: EngineServer) -> None:
            path = _write_copy(artifact, server.lora_dir / name)
            self._post(server, "load_lora_adapter", {"lora_name": name, "lora_path": str(path)}, must=True)
            with self._lock:
                server.loaded[version] = name
                server.changes += 1

        self._each(load, targets)
        return time.perf_counter() - t0, f"vllm load_lora_adapter on {len(targets)} server(s)"

    def remove(self, version: str) -> None:
        with self._lock:
            name = self._names.pop(version, None)

        def unload(server: EngineServer) -> None:
            with self._lock:
                held = server.loaded.pop(version, None)
                server.changes += 1
            if held is not None:
                self._post(server, "unload_lora_adapter", {"lora_name": held})
            if name is not None:
                shutil.rmtree(server.lora_dir / name, ignore_errors=True)

        self._each(unload, self.servers)

    def _post(self, server: EngineServer, op: str, body: dict[str, str], must: bool = False) -> None:
        try:
            r = self._control.post(f"{server.url}/v1/{op}", json=body)
        except httpx.HTTPError as exc:
            with self._lock:
                self._down(server)
            log.warning("vLLM at %s unreachable on %s (%s); it is reloaded when it is back", server.url, op, exc)
            return
        if r.status_code >= 400 and must:
            raise ServingError(
                f"vLLM at {server.url} refused {op} of {body.get('lora_name')!r}: {r.status_code} {r.text[:300]}"
            )

    # ------------------------------------------------------------ requests (event loop)
    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        encoded: Any = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    def _pick(self, version: str | None, tried: set[str]) -> tuple[EngineServer, str]:
        """The least busy reachable server holding `version` (not yet tried), and the model name to ask it for."""
        with self._lock:
            fit = [s for s in self.servers if s.up and s.url not in tried and (version is None or version in s.loaded)]
            if not fit:
                raise EngineError(
                    503,
                    f"engine unavailable: no reachable vLLM server holds "
                    f"{'the base' if version is None else repr(version)}",
                )
            turn = next(self._turn)
            server = min(fit, key=lambda s: (s.in_flight, (self.servers.index(s) - turn) % len(self.servers)))
            server.in_flight += 1
            return server, BASE_NAME if version is None else server.loaded[version]

    def _session(self) -> aiohttp.ClientSession:
        """One pooled aiohttp session per event loop (tests run several apps). aiohttp, not httpx, on the request
        path: at 32 concurrent requests httpx's pool spends about 2 ms of CPU per request (it scans and polls every
        pooled connection on each), aiohttp about 0.1 ms; here the router shares the cores with the engine."""
        loop = asyncio.get_running_loop()
        if loop not in self._sessions:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0)
            self._sessions[loop] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), timeout=timeout)
        return self._sessions[loop]

    def _body(self, model: str, ids: list[int], sampling: Sampling, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "prompt": ids,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": stream,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _failed(self, server: EngineServer, exc: Exception) -> None:
        with self._lock:
            self._down(server)
        log.warning("vLLM at %s failed a request (%s); retrying elsewhere, reloaded when it is back", server.url, exc)

    async def generate(self, version: str | None, ids: list[int], sampling: Sampling) -> Completion:
        tried: set[str] = set()
        while True:
            server, model = self._pick(version, tried)
            try:
                async with self._session().post(
                    f"{server.url}/v1/completions", json=self._body(model, ids, sampling, stream=False)
                ) as r:
                    status, raw = r.status, await r.read()
                if status != 200:
                    _raise_for_engine(server, status, raw.decode(errors="replace"))
            except (aiohttp.ClientError, _EngineDown) as exc:  # nothing returned yet: asking again is safe
                self._failed(server, exc)
                tried.add(server.url)
                continue
            finally:
                server.in_flight -= 1
            out = json.loads(raw)
            choice, used = out["choices"][0], out["usage"]
            return Completion(
                text=_CONTROL.sub("", choice["text"]),
                prompt_tokens=used["prompt_tokens"],
                completion_tokens=used["completion_tokens"],
                finish_reason=choice.get("finish_reason") or "stop",
            )

    async def stream(self, version: str | None, ids: list[int], sampling: Sampling) -> AsyncIterator[str | Completion]:
        tried: set[str] = set()
        while True:
            server, model = self._pick(version, tried)
            started = False
            try:
                async for piece in self._stream_from(server, model, ids, sampling):
                    started = True
                    yield piece
                return
            except (aiohttp.ClientError, _EngineDown) as exc:
                self._failed(server, exc)
                if started:  # text already went to the client: it cannot be taken back
                    raise EngineError(502, f"vLLM at {server.url} failed mid-answer: {exc}") from exc
                tried.add(server.url)
            finally:
                server.in_flight -= 1

    async def _stream_from(
        self, server: EngineServer, model: str, ids: list[int], sampling: Sampling
    ) -> AsyncIterator[str | Completion]:
        parts: list[str] = []
        finish, used = "stop", {"prompt_tokens": len(ids), "completion_tokens": 0}
        body = self._body(model, ids, sampling, stream=True)
        async with self._session().post(f"{server.url}/v1/completions", json=body) as r:
            if r.status != 200:
                _raise_for_engine(server, r.status, (await r.read()).decode(errors="replace"))
            async for raw in r.content:  # server-sent events, a line at a time
                line = raw.decode().rstrip("\r\n")
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                used = event.get("usage") or used
                for choice in event.get("choices", []):
                    text = _CONTROL.sub("", choice.get("text") or "")
                    finish = choice.get("finish_reason") or finish
                    if text:
                        parts.append(text)
                        yield text
        yield Completion(
            text="".join(parts),
            prompt_tokens=used["prompt_tokens"],
            completion_tokens=used["completion_tokens"],
            finish_reason=finish,
        )

    # ------------------------------------------------------------ health and shutdown
    def health(self) -> dict[str, Any]:
        with self._lock:
            servers = [
                {
                    "url": s.url,
                    "up": s.up,
                    "loaded": sorted(s.loaded),
                    "in_flight": s.in_flight,
                    "started_here": s.process is not None,
                }
                for s in self.servers
            ]
        return {"engine": self.name, "servers": servers}

    def close(self) -> None:
        """Called off the event loop (the router's shutdown runs it in a thread): sessions close on their loop."""
        self._fan.shutdown(wait=True)
        self._control.close()
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop, session in self._sessions.items():
            if loop.is_running() and loop is not here and not session.closed:  # on its own loop: would deadlock
                asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout=5)
        for s in self.servers:
            if s.process is not None:
                s.process.stop()


class _EngineDown(Exception):
    """A server answered 5xx (shutting down, out of memory): the request goes to another server."""


def _raise_for_engine(server: EngineServer, status: int, text: str) -> None:
    if status >= 500:
        raise _EngineDown(f"{status}: {text[:200]}")
    if status != 200:  # the request itself: asking another server would get the same answer
        raise EngineError(502, f"vLLM at {server.url} answered {status}: {text[:300]}")


def _dir_name(url: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", url.split("://", 1)[-1]).strip("-")


def _write_copy(artifact: LoadedArtifact, target: Path) -> Path:
    """The artifact's verified bytes written to `target` (replaced whole, never edited): what the engine loads."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".incoming-"))
    for rel, data in artifact.files.items():
        if rel == MANIFEST:
            continue
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
