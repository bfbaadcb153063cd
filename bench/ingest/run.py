"""Ingest benchmark: raw kafka-python producer vs the SDK vs the gateway (single events, batches of 100).

All against the same broker in one run; writes bench/results/ingest.json and the table in ingest/README.md.

    python bench/ingest/run.py                 # default: about a minute and a half
    python bench/ingest/run.py --events 50000 --rounds 5

Targets (issue 3, on 2 cores): SDK >= 80% of the raw producer's throughput; gateway single-event
p99 < 10 ms at 500 events/s; batched gateway >= 10,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from alignloop.core.kafka_auth import kafka_auth

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "ingest.json"
README = ROOT / "ingest" / "README.md"
BEGIN, END = "<!-- bench:ingest:begin -->", "<!-- bench:ingest:end -->"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def make_events(n: int, app_id: str = "bench-app"):
    from ingest.events import validate_event

    now = datetime.now(UTC)
    return [
        validate_event(
            {
                "schema_version": 1,
                "kind": "rating",
                "event_id": str(uuid.uuid4()),
                "occurred_at": now,
                "app_id": app_id,
                "user_id": f"user-{i % 1000}",
                "session_id": f"session-{i % 5000}",
                "prompt": [{"role": "user", "content": f"How do I reset my password? ({i % 200})"}],
                "response": "Open Settings, then Security, then choose Reset password.",
                "rating": "up" if i % 3 else "down",
            }
        )
        for i in range(n)
    ]


# ------------------------------------------------------------------ Kafka producers
PRODUCER = dict(acks="all", enable_idempotence=True, linger_ms=5, batch_size=64 * 1024)


def bench_raw(bootstrap: str, topic: str, events) -> dict:
    """The baseline: kafka-python with the SDK's settings, sending the same bytes, no model, no futures kept."""
    from kafka import KafkaProducer

    from ingest.events import encode_event, event_key

    payload = [(encode_event(e), event_key(e)) for e in events]  # encoding is the SDK's work, not the baseline's
    producer = KafkaProducer(bootstrap_servers=bootstrap, **kafka_auth(), **PRODUCER)
    producer.send(topic, b"warm-up", b"k").get(timeout=30)
    started, cpu = time.perf_counter(), time.process_time()
    for value, key in payload:
        producer.send(topic, value, key)
    producer.flush()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    producer.close()
    return {
        "events": len(events),
        "seconds": elapsed,
        "events_per_s": len(events) / elapsed,
        "cpu_us_per_event": cpu / len(events) * 1e6,
    }


def bench_sdk(bootstrap: str, topic: str, events) -> dict:
    """The SDK as an app uses it: send(event) for validated models (encode, key, a Delivery each), then flush."""
    from ingest.client import FeedbackClient

    client = FeedbackClient("bench-app", bootstrap, topic=topic, linger_ms=5, batch_size=64 * 1024, **kafka_auth())
    client.send(events[0]).result(timeout=30)
    started, cpu = time.perf_counter(), time.process_time()
    for e in events[1:]:
        client.send(e)
    client.flush()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    client.close()
    return {
        "events": len(events) - 1,
        "seconds": elapsed,
        "events_per_s": (len(events) - 1) / elapsed,
        "cpu_us_per_event": cpu / (len(events) - 1) * 1e6,
    }


def ack_latency(bootstrap: str, topic: str, events, rate: float, sdk: bool) -> dict:
    """Send at a steady `rate` and time each event from send to Kafka's acknowledgement."""
    from kafka import KafkaProducer

    from ingest.client import FeedbackClient
    from ingest.events import encode_event, event_key

    latencies: list[float] = []
    if sdk:
        client = FeedbackClient("bench-app", bootstrap, topic=topic, linger_ms=5, **kafka_auth())

        def send(e):
            t = time.perf_counter()
            client.send(e).add_done_callback(lambda _d: latencies.append(time.perf_counter() - t))

        close = client.close
    else:
        producer = KafkaProducer(bootstrap_servers=bootstrap, **kafka_auth(), **PRODUCER)

        def send(e):
            t = time.perf_counter()
            producer.send(topic, encode_event(e), event_key(e)).add_both(
                lambda _v: latencies.append(time.perf_counter() - t)
            )

        close = producer.close
    started = time.perf_counter()
    for i, e in enumerate(events):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(e)
    close()
    return {
        "events": len(events),
        "rate": rate,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


# ------------------------------------------------------------------ gateway
class GatewayProcess:
    """`alignloop ingest serve` in its own process (as deployed), on a fresh store and port."""

    def __init__(self, bootstrap: str, topic: str, work: Path):
        from tests.support.ports import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        from alignloop.core.settings import get_settings

        # its own home, the stack's passwords (they live under the stack's home)
        self.env = {
            **os.environ,
            **get_settings().service_credentials_env(),
            "ALIGNLOOP_HOME": str(work),
            "ALIGNLOOP_STORE_URL": f"sqlite:///{work / 'store.db'}",
            "ALIGNLOOP_KAFKA_BOOTSTRAP": bootstrap,
            "ALIGNLOOP_INGEST_TOPIC": topic,
            "ALIGNLOOP_INGEST_PORT": str(self.port),
        }
        exe = Path(sys.executable).parent / "alignloop"
        made = subprocess.run(
            [str(exe), "ingest", "keys", "create", "bench-app", "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        self.key = json.loads(made.stdout)["key"]
        with open(work / "gateway.log", "wb") as log:  # the gateway keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [str(exe), "ingest", "serve"], env=self.env, stdout=subprocess.DEVNULL, stderr=log
            )

    def __enter__(self) -> GatewayProcess:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}")
            time.sleep(0.2)
        raise RuntimeError("gateway did not become healthy in 60 s")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the gateway process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


async def _gateway_single(gw: GatewayProcess, bodies: list[bytes], rate: float, warmup: int) -> dict:
    """Open loop: one request every 1/rate s whatever the answers do, each timed from send to answer.

    The first `warmup` requests run at the same rate but are not counted: they open the client's connection
    pool and warm the gateway's caches (a steady-state latency, as a long-running client sees it).
    """
    import aiohttp  # a lighter client than httpx: the load generator shares the machine with the gateway

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {gw.key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(gw.url, headers=headers, connector=aiohttp.TCPConnector(limit=64)) as client:

        async def one(body: bytes, counted: bool) -> None:
            t = time.perf_counter()
            async with client.post("/v1/events", data=body) as r:
                await r.read()
            if counted:
                latencies.append(time.perf_counter() - t)
                statuses[r.status] = statuses.get(r.status, 0) + 1

        tasks = []
        started = time.perf_counter()
        for i, body in enumerate(bodies):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if i == warmup:
                counted_from = time.perf_counter()
            tasks.append(asyncio.create_task(one(body, i >= warmup)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - counted_from
    n = len(bodies) - warmup
    return {
        "events": n,
        "warmup_events": warmup,
        "target_rate": rate,
        "achieved_rate": n / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "statuses": statuses,
    }


async def _gateway_batched(gw: GatewayProcess, bodies: list[bytes], per_body: int, concurrency: int) -> dict:
    """Closed loop: `concurrency` clients each posting batches back to back."""
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies[1:]:
        queue.put_nowait(b)
    headers = {"Authorization": f"Bearer {gw.key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(gw.url, headers=headers) as client:
        async with client.post("/v1/events", data=bodies[0]) as r:
            await r.read()

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                t = time.perf_counter()
                async with client.post("/v1/events", data=body) as r:
                    await r.read()
                latencies.append(time.perf_counter() - t)
                statuses[r.status] = statuses.get(r.status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    events = (len(bodies) - 1) * per_body
    return {
        "events": events,
        "batch": per_body,
        "concurrency": concurrency,
        "events_per_s": events / elapsed,
        "request_p50_ms": percentile(latencies, 50) * 1000,
        "request_p99_ms": percentile(latencies, 99) * 1000,
        "statuses": statuses,
    }


def _median_by(rounds: list[dict], key: str) -> dict:
    """The round whose `key` is the median (the lower middle one for an even count)."""
    return sorted(rounds, key=lambda r: r[key])[(len(rounds) - 1) // 2]


# ------------------------------------------------------------------ report
def table(result: dict) -> str:
    raw, sdk = result["raw_producer"], result["sdk"]
    single, batched = result["gateway_single"], result["gateway_batched"]
    rows = [
        (
            "raw kafka-python producer",
            f"{raw['events_per_s']:,.0f}",
            f"{raw['latency']['p50_ms']:.1f}",
            f"{raw['latency']['p99_ms']:.1f}",
            "baseline",
        ),
        (
            "SDK `FeedbackClient`",
            f"{sdk['events_per_s']:,.0f}",
            f"{sdk['latency']['p50_ms']:.1f}",
            f"{sdk['latency']['p99_ms']:.1f}",
            f"{result['sdk_vs_raw']:.0%} of raw by wall time, {result['sdk_vs_raw_cpu']:.0%} by CPU (target >= 80%)",
        ),
        (
            f"gateway, single events at {single['target_rate']:.0f}/s",
            f"{single['achieved_rate']:,.0f}",
            f"{single['p50_ms']:.1f}",
            f"{single['p99_ms']:.1f}",
            "p99 target < 10 ms",
        ),
        (
            f"gateway, batches of {batched['batch']}",
            f"{batched['events_per_s']:,.0f}",
            f"{batched['request_p50_ms']:.1f} / request",
            f"{batched['request_p99_ms']:.1f} / request",
            "target >= 10,000 events/s",
        ),
    ]
    cpu = [
        f"{statistics.median(r['cpu_us_per_event'] for r in raw['rounds']):.0f} µs",
        f"{statistics.median(r['cpu_us_per_event'] for r in sdk['rounds']):.0f} µs",
        f"{single['gateway_cpu_ms_per_event'] * 1000:.0f} µs (gateway)",
        f"{batched['gateway_cpu_ms_per_event'] * 1000:.0f} µs (gateway)",
    ]
    rows = [(*r[:4], c, r[4]) for r, c in zip(rows, cpu)]
    lines = [
        "| path | events/s | p50 ms | p99 ms | CPU per event | note |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    m = result["machine"]
    lines.append(
        f"\nMeasured {result['measured_at'][:16]} UTC on {m['cpus']} CPUs (load average {m['load']}), "
        f"Kafka {result['broker']} on loopback{_login(result)}; `{result['command'].strip()}`. "
        "Producer latencies are "
        f"send -> ack at {result['latency_rate']:.0f} events/s; the gateway's single-event run counts what "
        f"follows its first {single.get('warmup_events', 0)} requests at that rate (warm-up). "
        "CPU per event is the sending process's (raw, SDK) or the gateway process's CPU time, "
        "which a busy shared machine distorts less than wall time."
    )
    return "\n".join(lines)


def _login(result: dict) -> str:
    login = result.get("kafka_login") or {}
    if "sasl_mechanism" not in login:
        return ""
    return f" (every client logged in over {login['security_protocol']}/{login['sasl_mechanism']})"


def write_readme(text: str) -> None:
    if not README.exists():
        return
    content = README.read_text()
    if BEGIN in content and END in content:
        head, rest = content.split(BEGIN, 1)
        content = head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1]
        README.write_text(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=15_000, help="events per throughput round")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of each measurement (raw/SDK alternating, then the gateway's); medians reported",
    )
    parser.add_argument("--single", type=int, default=2_000, help="single-event gateway requests")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s for the latency runs")
    parser.add_argument("--batches", type=int, default=200, help="gateway batches of --batch events")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4, help="batched requests in flight")
    parser.add_argument("--bootstrap", default=None, help="Kafka (default: core settings)")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the table in ingest/README.md")
    args = parser.parse_args()

    from alignloop.core.settings import get_settings
    from ingest.events import encode_event
    from ingest.topics import ensure_topics, topic_names
    from tests.support.kafka_topics import delete_topics

    bootstrap = args.bootstrap or get_settings().kafka_bootstrap
    base = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, 6, base=base)
    started = time.time()
    try:
        raws, sdks = [], []
        for r in range(args.rounds):
            events = make_events(args.events)
            order = [("raw", bench_raw), ("sdk", bench_sdk)] if r % 2 == 0 else [("sdk", bench_sdk), ("raw", bench_raw)]
            for name, fn in order:
                (raws if name == "raw" else sdks).append(fn(bootstrap, base, events))
                print(
                    f"round {r + 1} {name}: {(raws if name == 'raw' else sdks)[-1]['events_per_s']:,.0f} events/s",
                    flush=True,
                )
        lat_events = make_events(int(args.rate * 3))
        raw_lat = ack_latency(bootstrap, base, lat_events, args.rate, sdk=False)
        sdk_lat = ack_latency(bootstrap, base, make_events(int(args.rate * 3)), args.rate, sdk=True)
        print(
            f"ack latency at {args.rate:.0f}/s: raw p99 {raw_lat['p99_ms']:.1f} ms, sdk p99 {sdk_lat['p99_ms']:.1f} ms"
        )

        with tempfile.TemporaryDirectory() as work, GatewayProcess(bootstrap, base, Path(work)) as gw:
            singles, batches = [], []
            for r in range(args.rounds):  # alternating, like raw/SDK; the median round is reported
                warmup = int(args.rate)  # one second at the rate
                single_bodies = [encode_event(e) for e in make_events(args.single + warmup)]
                cpu = gw.cpu_s()
                single = asyncio.run(_gateway_single(gw, single_bodies, args.rate, warmup))
                single["gateway_cpu_ms_per_event"] = (gw.cpu_s() - cpu) / len(single_bodies) * 1000
                singles.append(single)
                print(
                    f"round {r + 1} gateway single at {args.rate:.0f}/s: p50 {single['p50_ms']:.1f} ms, "
                    f"p99 {single['p99_ms']:.1f} ms, {single['statuses']}",
                    flush=True,
                )
                events = make_events((args.batches + 1) * args.batch)
                bodies = [
                    b"[" + b",".join(encode_event(e) for e in events[i : i + args.batch]) + b"]"
                    for i in range(0, len(events), args.batch)
                ]
                cpu = gw.cpu_s()
                batched = asyncio.run(_gateway_batched(gw, bodies, args.batch, args.concurrency))
                batched["gateway_cpu_ms_per_event"] = (gw.cpu_s() - cpu) / len(events) * 1000
                batches.append(batched)
                print(
                    f"round {r + 1} gateway batched: {batched['events_per_s']:,.0f} events/s, {batched['statuses']}",
                    flush=True,
                )
            single = {**_median_by(singles, "p99_ms"), "rounds_p99_ms": [x["p99_ms"] for x in singles]}
            batched = {
                **_median_by(batches, "events_per_s"),
                "rounds_events_per_s": [x["events_per_s"] for x in batches],
            }
    finally:
        delete_topics(bootstrap, list(topic_names(base)))

    raw_tp = statistics.median(r["events_per_s"] for r in raws)
    sdk_tp = statistics.median(r["events_per_s"] for r in sdks)
    result = {
        "measured_at": datetime.now(UTC).isoformat(),
        "command": "python bench/ingest/run.py " + " ".join(a for a in sys.argv[1:] if a != "--no-readme"),
        "broker": get_settings().kafka_version,
        # every client here logs in as the settings say (the stack's SASL/SCRAM); the password is not recorded
        "kafka_login": {k: v for k, v in kafka_auth().items() if k in ("security_protocol", "sasl_mechanism")},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        },
        "latency_rate": args.rate,
        "raw_producer": {"events_per_s": raw_tp, "rounds": raws, "latency": raw_lat},
        "sdk": {"events_per_s": sdk_tp, "rounds": sdks, "latency": sdk_lat},
        "sdk_vs_raw": sdk_tp / raw_tp,
        "sdk_vs_raw_cpu": statistics.median(r["cpu_us_per_event"] for r in raws)
        / statistics.median(r["cpu_us_per_event"] for r in sdks),
        "gateway_single": single,
        "gateway_batched": batched,
        "targets": {
            "sdk_vs_raw_ge_0.8": sdk_tp / raw_tp >= 0.8,
            "gateway_single_p99_lt_10ms": single["p99_ms"] < 10,
            "gateway_batched_ge_10000": batched["events_per_s"] >= 10_000,
        },
        "wall_s": time.time() - started,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    print(text)
    if not args.no_readme:
        write_readme(text)
    print(f"wrote {RESULTS.relative_to(ROOT)} in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
