"""The hot-swap control channel on Redis pub/sub: publish a routing change, listen for them (an I/O edge)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _channel(channel: str | None) -> str:
    if channel is not None:
        return channel
    from deploy.settings import get_settings

    return get_settings().control_channel


def publish_routing_change(
    redis_url: str, base_model: str, *, channel: str | None = None, generation: int | None = None
) -> int:
    """Tell every replica that `base_model`'s routing changed; returns how many subscribers heard it.

    The message is only a nudge: replicas read the routing from the registry, so a lost one costs at most
    one reconcile interval.
    """
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        payload = json.dumps({"base_model": base_model, "generation": generation, "sent_at": time.time()})
        return int(client.publish(_channel(channel), payload))
    finally:
        client.close()


class ControlListener:
    """A daemon thread subscribed to the channel; calls `on_change(base_model)` per message, reconnects forever."""

    def __init__(self, redis_url: str, channel: str, on_change: Callable[[str], None]) -> None:
        self.redis_url, self.channel, self.on_change = redis_url, channel, on_change
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deploy-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)

    def _run(self) -> None:
        import redis

        while not self._stop.is_set():
            client = None
            try:
                client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=3, health_check_interval=10)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self.subscribed.set()
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.5)
                    if msg is None or msg.get("type") != "message":
                        continue
                    try:
                        base_model = json.loads(msg["data"]).get("base_model", "")
                    except (ValueError, AttributeError):
                        log.warning("ignoring a control message that is not JSON: %r", msg["data"][:200])
                        continue
                    self.on_change(base_model)
            except Exception as exc:  # Redis down or restarted: the periodic reconcile covers the gap
                self.subscribed.clear()
                log.warning("control channel %s lost (%s); retrying in 1 s", self.channel, exc)
                self._stop.wait(1.0)
            finally:
                if client is not None:
                    client.close()
