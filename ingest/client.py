"""The Python SDK's clients, as the service sees them: defined once in `alignloop_sdk.client`, re-exported here."""

from __future__ import annotations

from alignloop_sdk.client import Delivery, FeedbackClient, HttpDelivery, HttpFeedbackClient, OnError

__all__ = ["Delivery", "FeedbackClient", "HttpDelivery", "HttpFeedbackClient", "OnError"]
