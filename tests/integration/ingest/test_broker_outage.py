"""A broker of our own is stopped while the SDK sends and restarted 10 s later: nothing is lost silently.

Two clients send through the outage: one with a short delivery timeout (events queued during the outage
must fail, and reach the caller), one with the default (it rides the outage out: everything acknowledged).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from ingest.client import FeedbackClient
from ingest.errors import DeliveryError
from ingest.topics import ensure_topics
from support.kafka_topics import event_ids, read_topic
from support.ports import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


class Sender:
    """Sends `rate` events at a steady pace and records what the caller was told about each one."""

    def __init__(self, client: FeedbackClient, count: int, pace_s: float):
        self.client, self.count, self.pace_s = client, count, pace_s
        self.deliveries = []
        self.raised: set[str] = set()  # event ids the caller was told failed, by any path
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        for i in range(self.count):
            try:
                self.deliveries.append(
                    self.client.rate(user_id="u", prompt=f"q{i}", response="a", rating="up", session_id=f"s{i % 7}")
                )
            except DeliveryError as exc:
                self.raised.update(str(e.event_id) for e, _ in exc.failures)
            time.sleep(self.pace_s)

    def finish(self) -> None:
        self.thread.join(timeout=120)
        try:
            self.client.close(timeout=60)
        except DeliveryError as exc:
            self.raised.update(str(e.event_id) for e, _ in exc.failures)

    @property
    def acked(self) -> set[str]:
        return {d.event_id for d in self.deliveries if d.succeeded()}


def test_broker_stopped_while_sending(tmp_path):
    import uuid

    from alignloop.core.kafka_auth import kafka_auth
    from alignloop.core.settings import get_settings
    from alignloop.core.stack import KafkaBroker

    auth = kafka_auth()  # the clients below log in as the settings say: the private broker takes that user
    broker = KafkaBroker(
        version="3.9.1",
        cache_dir=get_settings().cache_dir,
        state_dir=tmp_path,
        port=free_port(),
        controller_port=free_port(),
        username=auth["sasl_plain_username"],
        password=auth["sasl_plain_password"],
        broker_password=uuid.uuid4().hex,
    )
    broker.start(timeout=120)
    try:
        topic = "feedback-outage"
        ensure_topics(broker.bootstrap, 3, base=topic)
        impatient = Sender(
            FeedbackClient("shop-bot", broker.bootstrap, topic=topic, delivery_timeout_ms=4000, max_block_ms=2000),
            count=600,
            pace_s=0.04,
        )
        patient = Sender(FeedbackClient("shop-bot", broker.bootstrap, topic=topic), count=600, pace_s=0.04)
        for s in (impatient, patient):
            s.client.rate(user_id="u", prompt="warm-up", response="a", rating="up").result(timeout=30)
            s.thread.start()
        time.sleep(3)
        broker.stop()
        stopped_at = time.monotonic()
        time.sleep(10)
        broker.start(timeout=120)
        restart_took = time.monotonic() - stopped_at
        for s in (impatient, patient):
            s.finish()

        on_topic = Counter(event_ids(read_topic(broker.bootstrap, topic)))
        print(
            f"outage {restart_took:.1f} s; impatient: {len(impatient.acked)} acked, {len(impatient.raised)} raised;"
            f" patient: {len(patient.acked)} acked, {len(patient.raised)} raised; on topic {len(on_topic)}"
        )
        for s in (impatient, patient):
            sent = {d.event_id for d in s.deliveries} | s.raised
            assert len(sent) == s.count, "an event neither queued nor raised"
            assert s.acked <= set(on_topic), "an acknowledged event is missing from the topic"
            assert all(d.done() for d in s.deliveries), "an event left neither acknowledged nor failed"
            assert sent - s.acked <= s.raised, "an unacknowledged event was never raised to the caller"
        # the outage was real: the impatient client lost deliveries and heard about every one of them
        assert impatient.raised, f"no failure during a {restart_took:.0f} s outage"
        # the patient client rode it out, each event exactly once (idempotent producer)
        assert not patient.raised and len(patient.acked) == patient.count
        assert all(on_topic[i] == 1 for i in patient.acked)
    finally:
        broker.stop()
