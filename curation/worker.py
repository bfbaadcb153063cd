"""The faust-streaming app: one consumer group on the feedback topic, thin agents around the curation edge.

    alignloop curation worker          (or: python -m curation.worker)

Each worker consumes its share of partitions, stages batches in the store, moves the watermarks in Redis,
sends refused events to `<topic>.rejected` and unreadable bytes to `<topic>.dlq`, and only then acknowledges
the batch, so no offset is committed before its event's writes: consumption is at-least-once and the writes
are idempotent. While the store, Redis or the broker refuses a write, the batch is retried with backoff (not
dropped, not acknowledged) and the worker reports unhealthy (`curation_worker_healthy` 0 on the metrics port).
Closed windows are settled on a timer under a Redis lock; the guard drops they decide (and re-judgements and
recurations) wait in the store's outbox, written in the settle's transaction, and the timer sends them to
`<topic>.rejected` with their reasons and redacted record, deleting each batch once the broker acknowledged it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from alignloop.core.kafka_auth import faust_credentials, kafka_auth
from curation import metrics

log = logging.getLogger("curation.worker")


class GroupProgress:
    """Whether the group's committed offsets reached the end of every partition: nothing is left to consume.

    One broker connection per worker, opened on first use and reopened after an error, with every call bounded
    by a timeout (a settle timer must never hang on the broker).
    """

    def __init__(self, bootstrap: str, topic: str, group: str, timeout_ms: int = 10000):
        self.bootstrap, self.topic, self.group, self.timeout_ms = bootstrap, topic, group, timeout_ms
        # kafka-python ships no types: a KafkaConsumer and a KafkaAdminClient once connected
        self._consumer: Any = None
        self._admin: Any = None

    def _connect(self) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer

        if self._consumer is None:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap, request_timeout_ms=self.timeout_ms, **kafka_auth()
            )
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=self.timeout_ms, **kafka_auth()
            )

    def partitions(self) -> int | None:
        """How many partitions the topic has (None when it does not exist)."""
        try:
            self._connect()
            return len(self._consumer.partitions_for_topic(self.topic) or ()) or None
        except Exception:
            self.close()
            raise

    def caught_up(self) -> bool:
        from kafka import TopicPartition

        try:
            self._connect()
            parts = self._consumer.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in parts]
            ends = self._consumer.end_offsets(tps, timeout_ms=self.timeout_ms)
            committed = self._admin.list_group_offsets(self.group).get(self.group, {})
        except Exception:
            self.close()
            raise
        return bool(tps) and all((committed[tp].offset if tp in committed else 0) >= ends[tp] for tp in tps)

    def close(self) -> None:
        for client in (self._consumer, self._admin):
            if client is not None:
                with contextlib.suppress(Exception):  # noqa: BLE001 - closing a broken connection
                    client.close()
        self._consumer = self._admin = None


class Dependencies:
    """The worker's health (which dependency last failed) and the retry loop every write of a batch goes through."""

    def __init__(self, first_delay_s: float = 0.2, max_delay_s: float = 5.0):
        self.first_delay_s, self.max_delay_s = first_delay_s, max_delay_s
        self.down: dict[str, str] = {}
        metrics.HEALTHY.set(1)

    @property
    def healthy(self) -> bool:
        return not self.down

    def report(self, name: str, error: BaseException | None) -> None:
        if error is None:
            if self.down.pop(name, None) is not None:
                log.warning("%s answers again", name)
        else:
            if name not in self.down:
                log.warning("%s failed (%r); retrying with backoff, nothing is acknowledged meanwhile", name, error)
            self.down[name] = repr(error)
        metrics.observe_dependency(name, error is None, self.healthy)

    async def retry(self, name: str, call):
        """Await `call()` until it succeeds, waiting 0.2 s, doubling up to 5 s, between failed tries."""
        delay = self.first_delay_s
        while True:
            try:
                result = await call()
            except Exception as exc:  # noqa: BLE001 - whatever a write raises, its batch must not be acked unwritten
                self.report(name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay_s)
            else:
                self.report(name, None)
                return result


class Settler:
    """The settle timer's tick: settle the windows that closed; when the group consumed everything and nothing
    arrived for `idle_flush_s`, settle the rest too (a final flush), once per new event."""

    def __init__(
        self,
        edge,
        progress: GroupProgress,
        deps: Dependencies,
        idle_flush_s: float,
        send_guard_drops: Callable[[], Awaitable[None]],
    ) -> None:
        self.edge, self.progress, self.deps, self.idle_flush_s = edge, progress, deps, idle_flush_s
        self.send_guard_drops = send_guard_drops  # the outbox the settles filled, drained to `.rejected`
        self.flushed_at = 0.0

    async def tick(self) -> None:
        try:
            await _in_thread(self.edge.settle_once)
            await self.send_guard_drops()
            if self._idle() and await _in_thread(self.progress.caught_up):
                seen = self.edge.last_staged
                # None: another worker held the settle lock, so this flush did not happen; the next tick retries
                if await _in_thread(lambda: self.edge.settle_once(final=True)) is not None:
                    self.flushed_at = seen
                await self.send_guard_drops()
        except Exception as exc:  # noqa: BLE001 - a failed settle is retried on the next tick; consuming goes on
            self.deps.report("settle", exc)
        else:
            self.deps.report("settle", None)

    def _idle(self) -> bool:
        import time

        idle = time.monotonic() - self.edge.last_staged
        return bool(self.idle_flush_s) and idle >= self.idle_flush_s and self.edge.last_staged > self.flushed_at


def _in_thread(fn, *args):
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _faust_app(settings, bootstrap: str, core):
    """The faust app of the curation group: raw bytes in and out, offsets from the earliest, no topic declared."""
    import faust

    datadir = settings.datadir or tempfile.mkdtemp(prefix="curation-faust-")
    return faust.App(
        settings.group,
        broker=f"kafka://{bootstrap}",
        broker_credentials=faust_credentials(core),
        store="memory://",
        datadir=datadir,
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        web_host="127.0.0.1",
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 4),
        broker_rebalance_timeout=settings.session_timeout_s * 2,
    )


def build_app(settings=None, core=None):
    """The faust app and its curation edge (returned for tests and the CLI)."""
    from alignloop.core.settings import get_settings as core_settings
    from curation.settings import get_settings

    settings = settings or get_settings()
    core = core or core_settings()
    bootstrap = settings.kafka_bootstrap or core.kafka_bootstrap
    progress = GroupProgress(bootstrap, settings.topic, settings.group)
    edge = _curation_edge(settings, core, progress)
    app = _faust_app(settings, bootstrap, core)
    feedback = app.topic(settings.topic, value_serializer="raw", key_serializer="raw")
    rejected = app.topic(f"{settings.topic}.rejected", value_serializer="raw", key_serializer="raw")
    dlq = app.topic(f"{settings.topic}.dlq", value_serializer="raw", key_serializer="raw")
    deps = Dependencies()

    async def send_guard_drops() -> None:
        """Drain the outbox of guard drops to `.rejected`: each batch acknowledged by the broker, then deleted."""
        while rows := await _in_thread(edge.outbox):
            await asyncio.gather(
                *[await rejected.send(key=key.encode(), value=message.encode()) for _, key, message in rows]
            )
            await _in_thread(edge.outbox_sent, [i for i, _, _ in rows])
            metrics.GUARD_DROPS_SENT.inc(len(rows))

    settler = Settler(edge, progress, deps, settings.idle_flush_s, send_guard_drops)

    async def send_side(out) -> None:
        sent = [await rejected.send(key=event_id.encode(), value=value) for event_id, value in out.rejected]
        sent += [await dlq.send(value=value) for value in out.dead]
        await asyncio.gather(*sent)  # each acknowledged by the broker

    @app.agent(feedback, concurrency=1)
    async def curate(stream):
        # noack_take: events are acked here, after every write of their batch succeeded (take_events would ack
        # them when the agent raises, and faust would commit offsets of events never stored)
        async for events in stream.noack_take(settings.batch_size, within=settings.batch_within_s):
            out = await _in_thread(edge.decode_batch, [_record(e) for e in events])
            await deps.retry("store", partial(_in_thread, edge.save_batch, out))
            await deps.retry("redis", partial(_in_thread, edge.mark_batch, out))
            await deps.retry("kafka", partial(send_side, out))
            for event in events:
                await stream.ack(event)

    app.timer(settings.settle_every_s)(settler.tick)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr="127.0.0.1")
    return app, edge


def _curation_edge(settings, core, progress: GroupProgress):
    """The worker's edge to its store and Redis, under the active policy, over the group's partitions."""
    import redis

    from alignloop.core.db import open_store
    from curation.migrations import FOLDER
    from curation.service import CurationEdge
    from curation.settings import active_policy, load_pseudonym_key

    engine = open_store(settings.store_url or core.resolved_store_url, branches=[FOLDER])
    rclient = redis.Redis.from_url(settings.redis_url or core.redis_url, decode_responses=True)
    return CurationEdge(
        engine,
        rclient,
        active_policy(settings),
        topic=settings.topic,
        group=settings.group,
        partitions=progress.partitions(),
        pseudonym_key=load_pseudonym_key(settings, core.home),
    )


def _record(event):
    from curation.service import Record

    m = event.message
    return Record(
        bytes(event.value or b""),
        m.partition,
        m.offset,
        datetime.fromtimestamp(m.timestamp, UTC) if m.timestamp else None,
    )


def run_worker(loglevel: str = "WARNING") -> None:
    from faust import Worker

    app, _ = build_app()
    Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    run_worker(os.environ.get("ALIGNLOOP_CURATION_LOGLEVEL", "WARNING"))
