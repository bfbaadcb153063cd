"""Feedback tokens: serving signs which response it gave with which version; curation verifies (pure, stdlib hmac).

A token is `alf1.<payload>.<mac>`: `payload` is base64url (no padding) of canonical JSON
`{"b": base model, "r": response id, "t": issued at (Unix seconds), "v": adapter version or null}`
(sorted keys, no spaces), and `mac` is base64url of HMAC-SHA256(key, "alf1." + payload). The MAC covers the
version prefix and the payload exactly as sent, so any change to either, or to the MAC, fails verification.

`v` null means the base model served the answer (no adapter): a verified token with a null version is
verified feedback on the base model named in `b`, and counts for the base arm of that base model.
A token is valid within `max_age` either side of the time it is checked at (`now`): curation checks it
at the event's own time, so the stream and the replay agree, and a client or simulated clock that runs
behind serving's does not void it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

PREFIX = "alf1"
MAX_TOKEN_CHARS = 2048  # the v1 event contract's limit on `feedback_token`
MIN_KEY_BYTES = 16


class TokenProblem(StrEnum):
    MALFORMED = "malformed"  # not `alf1.<payload>.<mac>`, or the payload is not the expected JSON
    BAD_SIGNATURE = "bad_signature"  # forged, altered, or signed with another key
    EXPIRED = "expired"  # issued more than max_age before (or after) `now`


@dataclass(frozen=True)
class VerifiedToken:
    """What serving signed: the answer's id, the base model, the version that produced it (None = base), when."""

    response_id: str
    base_model: str
    adapter_version: str | None
    issued_at: datetime


@dataclass(frozen=True)
class TokenRejection:
    problem: TokenProblem
    detail: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed: str) -> str:
    return _b64(hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest())


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"a feedback token key must be at least {MIN_KEY_BYTES} bytes; "
            f"got {len(key) if isinstance(key, bytes | bytearray) else type(key).__name__}"
        )


def sign_feedback_token(
    key: bytes, *, response_id: str, base_model: str, adapter_version: str | None, issued_at: datetime
) -> str:
    """The token for one answer. `adapter_version` None: the base model served it. `issued_at` must carry a zone."""
    _check_key(key)
    if issued_at.tzinfo is None:
        raise ValueError(f"`issued_at` must carry a time zone; got {issued_at.isoformat()}")
    body = {"b": base_model, "r": response_id, "t": int(issued_at.timestamp()), "v": adapter_version}
    payload = _b64(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    signed = f"{PREFIX}.{payload}"
    return f"{signed}.{_mac(key, signed)}"


def verify_feedback_token(
    key: bytes, token: str, *, now: datetime, max_age: timedelta
) -> VerifiedToken | TokenRejection:
    """The signed fields, or why not. Never raises for any `token` (a bad one is a rejection, not an error)."""
    _check_key(key)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        return TokenRejection(
            TokenProblem.MALFORMED, f"a token is an ASCII string of at most {MAX_TOKEN_CHARS} characters"
        )
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return TokenRejection(TokenProblem.MALFORMED, f"a token is `{PREFIX}.<payload>.<mac>`")
    signed = f"{parts[0]}.{parts[1]}"
    # compare the encoded MACs: base64 has spare bits in its last character, so decoding first would let
    # two spellings of one MAC both pass
    if not hmac.compare_digest(_mac(key, signed).encode("ascii"), parts[2].encode("ascii")):
        return TokenRejection(TokenProblem.BAD_SIGNATURE, "the MAC does not match the payload under this key")
    try:
        body = json.loads(_unb64(parts[1]).decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return TokenRejection(TokenProblem.MALFORMED, "the payload is not base64url JSON")
    if not (
        isinstance(body, dict)
        and set(body) == {"b", "r", "t", "v"}
        and isinstance(body["b"], str)
        and isinstance(body["r"], str)
        and type(body["t"]) is int
        and (body["v"] is None or isinstance(body["v"], str))
    ):
        return TokenRejection(TokenProblem.MALFORMED, "the payload must be {b: str, r: str, t: int, v: str|null}")
    try:
        issued = datetime.fromtimestamp(body["t"], UTC)
    except (OverflowError, OSError, ValueError):
        return TokenRejection(TokenProblem.MALFORMED, f"`t` is not a time; got {body['t']}")
    age = (now if now.tzinfo else now.replace(tzinfo=UTC)) - issued  # naive = UTC, as the stores keep it
    if abs(age) > max_age:
        return TokenRejection(
            TokenProblem.EXPIRED,
            f"issued {issued.isoformat()}, checked at {now.isoformat()}: more than {max_age} apart",
        )
    return VerifiedToken(response_id=body["r"], base_model=body["b"], adapter_version=body["v"], issued_at=issued)
