"""End-user sources (`client.ip_hash`): defined once in `alignloop_sdk.sources`, re-exported for the gateway."""

from __future__ import annotations

from alignloop_sdk.sources import END_USER_IP_HEADER, IPV6_PREFIX, parse_end_user_ip, source_hash

__all__ = ["END_USER_IP_HEADER", "IPV6_PREFIX", "parse_end_user_ip", "source_hash"]
