"""The ingest error root: every error the ingest package raises on purpose, documented in one place.

The SDK's errors (`EventError`, `DeliveryError`, `GatewayError`) and the root itself live in `alignloop_sdk.errors`,
so an app that installs only the SDK catches the same classes.
"""

from __future__ import annotations

from alignloop_sdk.errors import DeliveryError, EventError, GatewayError, IngestError

__all__ = ["DeliveryError", "EventError", "GatewayError", "IngestError", "KeyStoreError"]


class KeyStoreError(IngestError):
    """An API key could not be created, found or revoked."""
