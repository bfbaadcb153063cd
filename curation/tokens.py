"""Feedback token checks: which version verifiably produced the judged answer (pure; the key is passed in).

An event's `adapter_version` is what the client says; only its `feedback_token`, signed by serving, says
which version served the answer. The check never refuses or drops an event: a missing, malformed, forged,
expired or mismatched token leaves the event unverified (a TOKEN_* reason as its token status), and it
still trains if the guards keep it; only verified feedback counts for a canary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from alignloop.core.feedback_token import TokenProblem, TokenRejection, verify_feedback_token
from curation.reasons import TOKEN_VERIFIED, Reason


@dataclass(frozen=True)
class TokenCheck:
    """The key serving signs with and how far from the event's time a token may have been issued."""

    key: bytes
    max_age: timedelta

    @classmethod
    def from_settings(cls, core=None) -> TokenCheck:
        """From the core settings (`ALIGNLOOP_FEEDBACK_TOKEN_KEY` or the local secret); reads a file: call at edges."""
        from alignloop.core.settings import get_settings

        core = core or get_settings()
        return cls(core.resolved_feedback_token_key(), timedelta(seconds=core.feedback_token_max_age_s))


@dataclass(frozen=True)
class TokenStatus:
    """The outcome for one event: `status` is "verified" or a TOKEN_* reason; the rest is set when verified."""

    status: str
    version: str | None = None  # the serving version; None with status verified: the base model served it
    base_model: str | None = None
    served_at: datetime | None = None
    response_id: str | None = None

    @property
    def verified(self) -> bool:
        return self.status == TOKEN_VERIFIED

    def to_record(self) -> dict:
        return {
            "status": self.status,
            "version": self.version,
            "base_model": self.base_model,
            "served_at": self.served_at.isoformat() if self.served_at else None,
            "response_id": self.response_id,
        }

    @classmethod
    def from_record(cls, r: dict) -> TokenStatus:
        return cls(
            status=r["status"],
            version=r.get("version"),
            base_model=r.get("base_model"),
            served_at=datetime.fromisoformat(r["served_at"]) if r.get("served_at") else None,
            response_id=r.get("response_id"),
        )


_PROBLEM_REASON = {
    TokenProblem.MALFORMED: Reason.TOKEN_INVALID,
    TokenProblem.BAD_SIGNATURE: Reason.TOKEN_INVALID,
    TokenProblem.EXPIRED: Reason.TOKEN_EXPIRED,
}


def check_token(
    token: str | None, *, response_id: str | None, occurred_at: datetime, check: TokenCheck
) -> TokenStatus | None:
    """None without a token; else verified (the signed version, base model, serving time) or a TOKEN_* reason.

    The token is judged at the event's own time, so the stream and the replay agree on it. It must be for
    the event's `response_id`: a token copied onto feedback about another answer is a mismatch.
    """
    if token is None:
        return None
    try:
        got = verify_feedback_token(check.key, token, now=occurred_at, max_age=check.max_age)
    except Exception:  # noqa: BLE001 - a token must never stop the worker; whatever it is, it is not valid
        return TokenStatus(str(Reason.TOKEN_INVALID))
    if isinstance(got, TokenRejection):
        return TokenStatus(str(_PROBLEM_REASON[got.problem]))
    if got.response_id != response_id:
        return TokenStatus(str(Reason.TOKEN_MISMATCH))
    return TokenStatus(
        TOKEN_VERIFIED,
        version=got.adapter_version,
        base_model=got.base_model,
        served_at=got.issued_at,
        response_id=got.response_id,
    )
