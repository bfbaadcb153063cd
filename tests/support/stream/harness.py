"""Run curation workers as real processes against a broker, Redis and a SQLite store; read back what they wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from alignloop.core.db import make_engine, session_scope
from alignloop.core.kafka_auth import kafka_auth
from curation import query, store

REPO = Path(__file__).resolve().parents[3]


class Workers:
    def __init__(
        self,
        tmp: Path,
        *,
        topic: str,
        group: str,
        redis_url: str,
        bootstrap: str,
        store_url: str | None = None,
        **extra: str,
    ):
        self.tmp = tmp
        self.store_url = store_url or f"sqlite:///{tmp / 'store.db'}"
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self.env = {
            **os.environ,
            "PYTHONPATH": path,
            "ALIGNLOOP_CURATION_TOPIC": topic,
            "ALIGNLOOP_CURATION_GROUP": group,
            "ALIGNLOOP_CURATION_STORE_URL": self.store_url,
            "ALIGNLOOP_CURATION_REDIS_URL": redis_url,
            "ALIGNLOOP_CURATION_KAFKA_BOOTSTRAP": bootstrap,
            "ALIGNLOOP_CURATION_IDLE_FLUSH_S": "3",
            "ALIGNLOOP_CURATION_SETTLE_EVERY_S": "0.5",
            "ALIGNLOOP_CURATION_SESSION_TIMEOUT_S": "6",
            **{f"ALIGNLOOP_CURATION_{k.upper()}": v for k, v in extra.items()},
        }
        self.procs: list[subprocess.Popen] = []
        self.engine = None

    def start(self) -> subprocess.Popen:
        n = len(self.procs)
        env = {**self.env, "ALIGNLOOP_CURATION_DATADIR": str(self.tmp / f"faust-{n}")}
        with open(self.tmp / f"worker-{n}.log", "wb") as log:  # the worker keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "curation.worker"],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self.engine is not None:
            self.engine.dispose()

    def counts(self) -> dict[str, int]:
        if self.store_url.startswith("sqlite") and not (self.tmp / "store.db").exists():
            return {}
        if self.engine is None:
            self.engine = make_engine(self.store_url)
        try:
            with session_scope(self.engine) as s:
                return store.count_rows(s)
        except Exception:  # noqa: BLE001 - the tables appear once the first worker migrated the store
            return {}

    def wait_for(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        counts: dict = {}
        while time.monotonic() < deadline:
            counts = self.counts()
            if counts and predicate(counts):
                return counts
            for p in self.procs:
                if p.poll() not in (None, -signal.SIGKILL, -signal.SIGTERM):
                    raise AssertionError(f"a worker exited with {p.returncode}: {self.logs()[-3000:]}")
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; counts {counts}; logs: {self.logs()[-3000:]}")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("worker-*.log")))

    def outputs(self) -> dict:
        with session_scope(self.engine) as s:
            return {
                "decisions": store.load_decisions(s),
                "pairs": sorted(query.load_pairs(s), key=lambda p: p["pair_id"]),
                "unpaired": sorted(query.load_unpaired(s), key=lambda u: u["example_id"]),
                "dlq": store.load_dead_letters(s),
                "counts": store.count_rows(s),
                "staged_texts": [t for it in store.load_staged(s, *_all()) for t in it.texts()],
            }


def _all():
    from datetime import UTC, datetime

    return datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


def expected_ids(lines: list[str]) -> int:
    """How many decisions a complete run makes: one per distinct readable (app_id, event_id)."""
    from curation.decode import Accepted, Rejected, decode_raw

    ids = set()
    for line in lines:
        out = decode_raw(line)
        if isinstance(out, Accepted):
            ids.add(out.item.key)
        elif isinstance(out, Rejected):
            ids.add(out.key)
    return len(ids)


def read_topic(bootstrap: str, topic: str, timeout_ms: int = 5000) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        **kafka_auth(),
        auto_offset_reset="earliest",
        consumer_timeout_ms=timeout_ms,
        group_id=None,
    )
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()
