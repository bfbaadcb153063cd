"""Acceptance: 4 callers sending 16,000-word prompts cannot stall normal requests or grow the server's memory.

A real `deploy serve` process (the tiny model, default bounds) gets, at once:
- 4 abusive callers, each with its own valid key, sending ABUSE_MESSAGES requests of 16,000 words each, ABUSE_IN_FLIGHT
  at a time; the words come as 4 chat messages of 4,000 words (about 25 KB each), so every one passes the
  per-message length check and only the request-wide bounds can stop it;
- 2 normal callers on another key, asking short questions one after another.
Normal requests are measured while the abuse lasts: all must be answered, with p99 under 2 s. The server's
resident memory is sampled every 50 ms and must stay within RSS_GROWTH_MIB of what it used, warmed up, before
the abuse: the door keeps at most `limit_concurrency` bodies of `max_body_bytes` (128 x 64 KiB = 8 MiB raw,
a few times that parsed), the queue at most `max_queue` prompts of at most 512 tokens, and a generate batch on
the tiny model is 16 rows of at most 768 positions (a 16 x 768 x 768 float mask is 38 MB): under 100 MiB in
all, so 256 MiB leaves room for the allocator's slack and still catches a prompt that reaches the model
(one 16,000-word prompt's attention scores alone are gigabytes). The server runs under an address-space
limit, so if the bounds ever fail, a runaway allocation fails inside it rather than taking the machine down.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from support.models import PROMPT, synthetic_sentences, wait_for
from support.ports import free_port
from support.servers import replica_env

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ABUSERS, ABUSE_MESSAGES, ABUSE_IN_FLIGHT = 4, 100, 8
NORMAL_CLIENTS = 2
RSS_GROWTH_MIB = 256
ABUSE_MAX_S = 60
ADDRESS_SPACE_LIMIT = 4 * 2**30  # twice the server's own address space (about 2 GiB); a safety net only


def sixteen_thousand_words() -> list[dict]:
    words = " ".join(synthetic_sentences(4000, seed=9)).split()
    assert len(words) >= 16_000
    chunks = [" ".join(words[i * 4000 : (i + 1) * 4000]) for i in range(4)]
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(chunks)]


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def start_server(settings, port: int, log_path, overrides: dict[str, str]) -> subprocess.Popen:
    env = replica_env(settings, **overrides)
    return subprocess.Popen(
        [sys.executable, "-c", "from deploy.cli import app; app()", "serve", "--port", str(port)],
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=_limit_address_space,
    )


class PeakRss:
    """The process's peak resident memory, sampled every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


async def normal_client(http: httpx.AsyncClient, key: str, i: int, until: asyncio.Event, out: list) -> None:
    n = 0
    while not until.is_set():
        n += 1
        t0 = time.perf_counter()
        try:
            r = await http.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
                json={"messages": PROMPT, "max_tokens": 12, "temperature": 0, "user": f"u{i}-{n}"},
            )
            status = r.status_code
        except httpx.HTTPError as exc:
            status = repr(exc)
        out.append((time.perf_counter() - t0, status))


async def abusive_client(http: httpx.AsyncClient, key: str, body: bytes, out: list) -> None:
    slots = asyncio.Semaphore(ABUSE_IN_FLIGHT)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def one() -> None:
        async with slots:
            try:
                r = await http.post("/v1/chat/completions", headers=headers, content=body, timeout=60)
                out.append(r.status_code)
            except httpx.HTTPError as exc:
                out.append(type(exc).__name__)

    await asyncio.gather(*(one() for _ in range(ABUSE_MESSAGES)))


async def normal_clients(url: str, key: str, until: threading.Event, out: list) -> None:
    async def poll_until() -> None:
        while not until.is_set():
            await asyncio.sleep(0.02)
        done.set()

    done = asyncio.Event()
    async with httpx.AsyncClient(base_url=url) as http:
        await asyncio.gather(poll_until(), *(normal_client(http, key, i, done, out) for i in range(NORMAL_CLIENTS)))


async def abusive_clients(url: str, keys: list[str], out: list) -> None:
    # encoded once: the clients' own JSON work must not be what slows anything down
    body = json.dumps({"messages": sixteen_thousand_words(), "max_tokens": 256, "temperature": 1.0}).encode()
    limits = httpx.Limits(max_connections=ABUSERS * ABUSE_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=url, limits=limits) as http:
        try:  # on a server without bounds the abuse would take hours: it ends after ABUSE_MAX_S either way
            await asyncio.wait_for(asyncio.gather(*(abusive_client(http, k, body, out) for k in keys)), ABUSE_MAX_S)
        except TimeoutError:
            out.append("unfinished")


def run_abuse(url: str, normal_key: str, abuser_keys: list[str]) -> tuple[list, list, float]:
    """The abuse in this thread's event loop; the normal callers in their own thread and loop, so that the
    abusers' client-side work does not count in the normal callers' latency."""
    normal: list = []
    abusive: list = []
    done = threading.Event()
    polite = threading.Thread(target=lambda: asyncio.run(normal_clients(url, normal_key, done, normal)), daemon=True)
    polite.start()
    t0 = time.perf_counter()
    try:
        asyncio.run(abusive_clients(url, abuser_keys, abusive))
    finally:
        took = time.perf_counter() - t0
        done.set()
        polite.join(timeout=30)
    return normal, abusive, took


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]


@pytest.mark.parametrize(
    "overrides, refused",
    [
        ({}, 413),  # the defaults: the body is past `max_body_bytes`, refused from its Content-Length
        (
            {"ALIGNLOOP_DEPLOY_MAX_BODY_BYTES": str(2**20)},
            400,
        ),  # a body limit that lets it in: the token limit stops it
    ],
    ids=["body-limit", "token-limit"],
)
def test_huge_prompts_from_four_keyed_callers_do_not_stall_normal_requests_or_grow_memory(
    deploy_env, tmp_path, overrides, refused
):
    # the normal callers ask back to back (20-30 requests/s when the server is quick): their key's own rate
    # covers that, as an operator would size it for an app; the abusers have the defaults
    normal_key = deploy_env.serving_key("app", rate_per_s=100, burst=100)
    abuser_keys = [deploy_env.serving_key(f"abuser-{i}") for i in range(ABUSERS)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(deploy_env.settings, port, tmp_path / "serve.log", overrides)
    try:

        def ready():
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=120, interval=0.2)
        for _ in range(10):  # warm up: the first answers allocate what every later one reuses
            r = httpx.post(
                f"{url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {normal_key}"},
                json={"messages": PROMPT, "max_tokens": 12},
                timeout=30,
            )
            assert r.status_code == 200, r.text
        baseline = psutil.Process(proc.pid).memory_info().rss
        with PeakRss(proc.pid) as rss:
            normal, abusive, took = run_abuse(url, normal_key, abuser_keys)
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    latencies = [t for t, _ in normal]
    growth_mib = (rss.peak - baseline) / 2**20
    outcomes = {s: abusive.count(s) for s in set(abusive)}
    print(
        f"\nabuse: {ABUSERS} keys x {ABUSE_MESSAGES} requests of 16,000 words, {ABUSE_IN_FLIGHT} in flight each, "
        f"took {took:.1f} s; answers {outcomes}\nnormal: {len(normal)} requests, p50 "
        f"{sorted(latencies)[len(latencies) // 2]:.3f} s, p99 {p99(latencies):.3f} s, max {max(latencies):.3f} s, "
        f"statuses {sorted({str(s) for _, s in normal})}\nserver RSS: {baseline / 2**20:.0f} MiB before, peak "
        f"{rss.peak / 2**20:.0f} MiB (+{growth_mib:.0f} MiB; bound +{RSS_GROWTH_MIB} MiB)"
    )
    assert alive, (tmp_path / "serve.log").read_text()[-3000:]
    assert all(s == 200 for _, s in normal), [s for _, s in normal if s != 200][:5]
    assert p99(latencies) < 2.0
    assert growth_mib < RSS_GROWTH_MIB
    assert len(normal) >= 20, "too few normal requests to measure during the abuse"
    assert outcomes.keys() <= {refused, 429}, outcomes  # 429: over the key's rate (not every one is)
