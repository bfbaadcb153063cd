"""PII in every field, plain and hidden behind JSON escapes: nothing of it is staged, decided, paired or sent to
`.rejected`/`.dlq`; identifiers become keyed pseudonyms that the guards can still count by."""

import json

import pytest

from curation.decode import Accepted, DeadLetter, Rejected, decode_raw
from curation.pii import pseudonymise, unescape_json_text
from curation.pipeline import settle_window, window_start
from curation.replay import run_replay
from curation.settings import Policy

KEY = b"test-pseudonym-key"
EMAIL, PHONE, CARD = "jane.doe@example.com", "+44 20 7946 0958", "4111 1111 1111 1111"
SECRETS = (EMAIL, PHONE, CARD, "jane.doe", "7946 0958", "4111111111111111", "4111 1111")
TEXT = f"write to {EMAIL}, call {PHONE}, card {CARD}"
IDENT = f"{EMAIL} {PHONE}"
POLICY = Policy(window_s=3600, lookahead_s=0, lookback_s=3600)


def event(i: int, kind: str, **patch) -> dict:
    common = {
        "schema_version": 1,
        "kind": kind,
        "event_id": f"00000000-0000-4000-8000-{i:012d}",
        "occurred_at": f"2026-11-01T00:{i:02d}:00Z",
        "app_id": "app",
        "user_id": IDENT,
        "session_id": IDENT,
        "response_id": IDENT,
        "adapter_version": f"v1 {EMAIL}",
        "client": {"ip_hash": IDENT, "device_id": IDENT},
        "metadata": {EMAIL: TEXT, "card": CARD},
        "prompt": [
            {"role": "system", "content": TEXT},
            {"role": "user", "content": f"{TEXT} (question {i})"},
            {"role": "assistant", "content": TEXT},
            {"role": "user", "content": TEXT},
        ],
    }
    payload = {
        "rating": {"response": TEXT, "rating": "up"},
        "edit": {"response": TEXT, "edited": f"{TEXT}!!"},
        "comparison": {"responses": [TEXT, f"{TEXT}?"], "chosen": 0},
    }[kind]
    return {**common, **payload, **patch}


def escaped(data: dict) -> str:
    """The same event with `@` and spaces written as JSON escapes (valid JSON, same decoded values)."""
    return json.dumps(data, separators=(",", ":")).replace("@", "\\u0040").replace(" ", "\\u0020")


def leaks(text: str) -> list[str]:
    decoded = unescape_json_text(text)
    return [s for s in SECRETS if s in text or s in decoded]


FORMS = {"plain": lambda d: json.dumps(d), "escaped": escaped}


@pytest.mark.parametrize("form", FORMS)
def test_valid_events_keep_no_pii_in_any_field_and_ids_become_pseudonyms(form):
    raws = [FORMS[form](event(i, kind)) for i, kind in enumerate(("rating", "edit", "comparison"))]
    outcomes = [decode_raw(r, pseudonym_key=KEY) for r in raws]
    assert all(isinstance(o, Accepted) for o in outcomes)
    items = [o.item for o in outcomes]
    for it in items:
        record = json.dumps(it.to_record(), ensure_ascii=False)
        assert leaks(record) == [], record
        assert set(it.pii) >= {"pii_email", "pii_phone", "pii_card"}
        # decoded first: the escaped and the plain id are one id, so one pseudonym (the guards count per user)
        assert it.user_id == pseudonymise(KEY, "user_id", IDENT) != pseudonymise(b"other", "user_id", IDENT)
        assert it.device_id == pseudonymise(KEY, "device_id", IDENT) and it.ip_hash.startswith("ip_")
        assert it.adapter_version == "v1 <EMAIL>"
    result = settle_window(items, window_start(items[0].occurred_at, POLICY), POLICY)
    built = json.dumps(
        [result.decisions, [p.to_json() for p in result.pairs], [u.to_json() for u in result.unpaired], result.signals],
        default=str,
        ensure_ascii=False,
    )
    assert leaks(built) == []
    assert {d["user_id"] for d in result.decisions} == {pseudonymise(KEY, "user_id", IDENT)}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "breakage",
    [
        {"rating": TEXT},  # a bad value echoed by the rule's message
        {"unknown": TEXT},  # an unknown field with PII in its value
        {EMAIL: "x"},  # an unknown field whose name is PII
        {"user_id": f"{IDENT} " * 30},  # too long: the value is PII
        {"occurred_at": TEXT},
    ],
)
def test_rejected_events_carry_no_pii_in_errors_or_payload(form, breakage):
    out = decode_raw(FORMS[form](event(1, "rating", **breakage)), pseudonym_key=KEY)
    assert isinstance(out, Rejected), out
    message = json.dumps({"errors": out.errors, "event": out.redacted}, ensure_ascii=False)
    assert leaks(message) == [], message
    assert all(e["loc"] and e["msg"] for e in out.errors)
    shown = json.loads(out.redacted)
    if "user_id" not in breakage:
        assert shown["user_id"] == pseudonymise(KEY, "user_id", IDENT)
    assert shown["client"]["device_id"] == pseudonymise(KEY, "device_id", IDENT)
    assert shown["session_id"] == pseudonymise(KEY, "session_id", IDENT)


@pytest.mark.parametrize("form", FORMS)
def test_unreadable_input_is_decoded_before_it_is_redacted(form):
    raw = FORMS[form](event(1, "rating"))
    for cut in (raw[: len(raw) // 2], raw[:-1], "[" + raw + "]"):
        out = decode_raw(cut, pseudonym_key=KEY)
        assert isinstance(out, DeadLetter | Rejected)
        assert leaks(out.redacted) == [], out.redacted


def test_replay_is_the_same_whichever_key_and_whichever_escaping():
    raws = [event(i, kind, user_id=f"user-{i % 3}") for i, kind in enumerate(["rating", "edit", "comparison"] * 8)]
    a = run_replay([json.dumps(r) for r in raws], POLICY, pseudonym_key=KEY)
    b = run_replay([escaped(r) for r in raws], POLICY, pseudonym_key=b"another key")
    assert a.decisions == b.decisions and len(a.decisions) == 24
    assert a.pairs == b.pairs and a.unpaired == b.unpaired
