"""alignloop's SDK for product apps: the v1 feedback event and two clients, Kafka (`FeedbackClient`) and HTTP.

    from alignloop_sdk import HttpFeedbackClient
    with HttpFeedbackClient("shop-bot", "http://127.0.0.1:8700", api_key) as feedback:
        feedback.rate(user_id="u-1", prompt="2+2?", response="4", rating="up")

Depends on pydantic, httpx and kafka-python only; the service (`ingest`, `curation`, ...) re-exports these.
"""

from alignloop_sdk import events as _events
from alignloop_sdk.client import Delivery, FeedbackClient, HttpDelivery, HttpFeedbackClient, kafka_security
from alignloop_sdk.errors import AlignloopError, DeliveryError, EventError, GatewayError, IngestError
from alignloop_sdk.events import *  # noqa: F403 - the v1 event contract, as its module lists it

__version__ = "0.1.0"

__all__ = [
    *_events.__all__,
    "AlignloopError",
    "Delivery",
    "DeliveryError",
    "EventError",
    "FeedbackClient",
    "GatewayError",
    "HttpDelivery",
    "HttpFeedbackClient",
    "IngestError",
    "kafka_security",
]
