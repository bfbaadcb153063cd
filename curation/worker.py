"""The faust-streaming app: one consumer group on the feedback topic, thin agents around the curation edge.

    alignloop curation worker          (or: python -m curation.worker)

Each worker consumes its share of partitions, stages batches in the store (ack only after the write, so
consumption is at-least-once and writes are idempotent), sends refused events to `<topic>.rejected` and
unreadable bytes to `<topic>.dlq`, and settles closed windows on a timer under a Redis lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from datetime import UTC, datetime

log = logging.getLogger("curation.worker")


class GroupProgress:
    """Whether the group's committed offsets reached the end of every partition: nothing is left to consume.

    One broker connection per worker, opened on first use and reopened after an error, with every call bounded
    by a timeout (a settle timer must never hang on the broker).
    """

    def __init__(self, bootstrap: str, topic: str, group: str, timeout_ms: int = 10000):
        self.bootstrap, self.topic, self.group, self.timeout_ms = bootstrap, topic, group, timeout_ms
        self._consumer = None
        self._admin = None

    def _connect(self) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer

        if self._consumer is None:
            self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, request_timeout_ms=self.timeout_ms)
            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=self.timeout_ms)

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
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
        self._consumer = self._admin = None


def build_app(settings=None, core=None):
    """The faust app and its curation edge (returned for tests and the CLI)."""
    import faust
    import redis

    from alignloop.db import open_store
    from alignloop.settings import get_settings as core_settings
    from curation.service import CurationEdge, Record
    from curation.settings import get_settings, load_pseudonym_key

    settings = settings or get_settings()
    core = core or core_settings()
    bootstrap = settings.kafka_bootstrap or core.kafka_bootstrap
    engine = open_store(settings.store_url or core.resolved_store_url)
    rclient = redis.Redis.from_url(settings.redis_url or core.redis_url, decode_responses=True)
    progress = GroupProgress(bootstrap, settings.topic, settings.group)
    edge = CurationEdge(engine, rclient, settings.policy, topic=settings.topic, group=settings.group,
                        partitions=progress.partitions(), pseudonym_key=load_pseudonym_key(settings, core.home))
    datadir = settings.datadir or tempfile.mkdtemp(prefix="curation-faust-")
    app = faust.App(
        settings.group, broker=f"kafka://{bootstrap}", store="memory://", datadir=datadir,
        value_serializer="raw", key_serializer="raw", web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066, web_host="127.0.0.1", topic_disable_leader=True,
        topic_allow_declare=False, consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0, broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 4),
        broker_rebalance_timeout=settings.session_timeout_s * 2)
    feedback = app.topic(settings.topic, value_serializer="raw", key_serializer="raw")
    rejected = app.topic(f"{settings.topic}.rejected", value_serializer="raw", key_serializer="raw")
    dlq = app.topic(f"{settings.topic}.dlq", value_serializer="raw", key_serializer="raw")
    state = {"flushed_at": 0.0}

    @app.agent(feedback, concurrency=1)
    async def curate(stream):
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            records = [Record(bytes(e.value or b""), e.message.partition, e.message.offset,
                              datetime.fromtimestamp(e.message.timestamp, UTC) if e.message.timestamp else None)
                       for e in events]
            out = await loop.run_in_executor(None, edge.handle_batch, records)
            for event_id, value in out.rejected:
                await rejected.send(key=event_id.encode(), value=value)
            for value in out.dead:
                await dlq.send(value=value)

    @app.timer(settings.settle_every_s)
    async def settle():
        import time

        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, edge.settle_once)
            idle = time.monotonic() - edge.last_staged
            if settings.idle_flush_s and idle >= settings.idle_flush_s and edge.last_staged > state["flushed_at"]:
                if await loop.run_in_executor(None, progress.caught_up):
                    seen = edge.last_staged
                    # None: another worker held the settle lock, so this flush did not happen; the next tick retries
                    if await loop.run_in_executor(None, lambda: edge.settle_once(final=True)) is not None:
                        state["flushed_at"] = seen
        except Exception:  # noqa: BLE001 - a failed settle is retried on the next tick; it must not stop consuming
            log.exception("settle failed; retrying on the next tick")

    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr="127.0.0.1")
    return app, edge


def run_worker(loglevel: str = "WARNING") -> None:
    from faust import Worker

    app, _ = build_app()
    Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    run_worker(os.environ.get("ALIGNLOOP_CURATION_LOGLEVEL", "WARNING"))
