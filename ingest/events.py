"""The v1 feedback event, as the service sees it: defined once in the SDK (`alignloop_sdk.events`), re-exported here."""

from __future__ import annotations

from alignloop_sdk import events as _events
from alignloop_sdk.events import *  # noqa: F403 - the whole v1 contract, as the SDK's events module lists it

__all__ = list(_events.__all__)
