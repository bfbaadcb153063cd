"""Reason codes: the stable strings every curation decision, metric and report uses."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # decoding (per event)
    NOT_PARSEABLE = "not_parseable"  # dlq: no readable event_id
    CONTRACT = "contract"  # prefix: contract_<ingest reason>, e.g. contract_schema
    DUPLICATE_EVENT_ID = "duplicate_event_id"
    FUTURE_EVENT = "future_event"  # occurred_at beyond the broker's time plus max_future_skew_s
    # cross-event guards
    DUPLICATE_CONTENT = "duplicate_content"
    NEAR_DUPLICATE = "near_duplicate"
    RATE_USER = "rate_user"
    RATE_SOURCE = "rate_source"
    BOT_REGULAR = "bot_regular"
    UNRELIABLE_USER = "unreliable_user"
    BRIGADE = "brigade"
    TRIGGER_PHRASE = "trigger_phrase"
    POISON_PAYLOAD = "poison_payload"
    REFUSAL_TO_COMPLIANCE = "refusal_to_compliance"
    UNSAFE_CONTENT = "unsafe_content"
    TRIVIAL_EDIT = "trivial_edit"
    LATE_EVENT = "late_event"
    # redactions (kept, text changed)
    PII_EMAIL = "pii_email"
    PII_PHONE = "pii_phone"
    PII_CARD = "pii_card"
    PII_IBAN = "pii_iban"
    PII_IP = "pii_ip"
    # feedback tokens (kept or dropped by the guards as any event; these only mark it unverified, so it never
    # counts for a canary)
    TOKEN_INVALID = "token_invalid"  # malformed, forged, or signed with another key
    TOKEN_EXPIRED = "token_expired"  # issued more than the max age away from the event's time
    TOKEN_MISMATCH = "token_mismatch"  # a valid token for another response than the event's response_id
    # accounts judged over their whole history (curation/evidence.py)
    SOURCE_CHURN = "source_churn"  # rotates through more devices or addresses than a person uses
    CONTRARIAN = "contrarian"  # long-run agreement with the consensus far below chance
    CO_VOTING = "co_voting"  # votes with a group beyond chance, against everyone else


class Decision(StrEnum):
    KEEP = "keep"
    DROP = "drop"
    REDACT = "redact"


# the token status of an event whose token verified (the others are the TOKEN_* reasons, or none: no token)
TOKEN_VERIFIED = "verified"
PII_REASONS = frozenset({Reason.PII_EMAIL, Reason.PII_PHONE, Reason.PII_CARD, Reason.PII_IBAN, Reason.PII_IP})


def contract_reason(ingest_reason: str) -> str:
    """The decision reason for an event the v1 contract refused, e.g. `contract_schema`."""
    return f"{Reason.CONTRACT}_{ingest_reason}"


def decide(reasons: list[str]) -> Decision:
    """drop if any reason is not a redaction; redact if only redactions; keep otherwise."""
    if any(r not in PII_REASONS for r in reasons):
        return Decision.DROP
    return Decision.REDACT if reasons else Decision.KEEP
