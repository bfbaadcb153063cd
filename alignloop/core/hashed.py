"""Hashed secrets: random keys and tokens shown once and kept only as their SHA-256, checked per request.

A secret is `<prefix>_<id>_<random>`: the id finds its row, the digest checks it. The secrets are random
256-bit values, so a plain digest (no slow KDF) is enough. Used by the gateway's API keys (ingest.store) and
the registry's admin tokens and serving keys (deploy.named_secrets).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def digest(secret: str) -> str:
    """The hex SHA-256 of a secret: what the store keeps."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> tuple[str, str]:
    """(id, secret) of a new `<prefix>_<id>_<random>` secret."""
    secret_id = secrets.token_hex(6)
    return secret_id, f"{prefix}_{secret_id}_{secrets.token_urlsafe(32)}"


def secret_pattern(prefix: str) -> re.Pattern[str]:
    """What a well-formed secret of `prefix` looks like; group 1 is its id."""
    return re.compile(re.escape(prefix) + r"_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})")


def secret_id(pattern: re.Pattern[str], secret: str) -> str | None:
    """The id of a well-formed secret, or None for a malformed one."""
    match = pattern.fullmatch(secret)
    return match.group(1) if match else None


def matches(stored_sha256: str, secret: str) -> bool:
    """Whether `secret` is the one whose digest was stored (compared in constant time)."""
    return secrets.compare_digest(stored_sha256, digest(secret))


class LookupCache(Generic[T]):
    """Answers about presented secrets, each trusted for `ttl_s` seconds, then looked up again (so a revoked
    secret stops working within that time without a store read per request). Keyed by the secret's digest."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._seen: dict[str, tuple[T, float]] = {}

    def get(self, secret: str, look_up: Callable[[str], T]) -> T:
        """The fresh answer for `secret`, else `look_up(secret)` (then kept)."""
        fresh, found = self.cached(secret)
        if fresh:
            return found  # type: ignore[return-value]
        found = look_up(secret)
        self.put(secret, found)
        return found

    def cached(self, secret: str) -> tuple[bool, T | None]:
        """(True, answer) while an answer for `secret` is fresh, else (False, None)."""
        hit = self._seen.get(digest(secret))
        if hit is not None and hit[1] > time.monotonic():
            return True, hit[0]
        return False, None

    def put(self, secret: str, found: T) -> None:
        if len(self._seen) > self.max_entries:
            self._seen.clear()
        self._seen[digest(secret)] = (found, time.monotonic() + self.ttl_s)
