"""PII redaction: each kind is found and replaced, checksums keep look-alikes, nothing is left behind."""

import re

from hypothesis import given
from hypothesis import strategies as st

from curation.pii import find_pii, iban_ok, luhn_ok, redact_text
from curation.reasons import Reason


def test_each_kind_is_redacted():
    text = (
        "write to jane.doe+x@example.co.uk, call +44 20 7946 0958, card 4111 1111 1111 1111, "
        "iban GB82 WEST 1234 5698 7654 32, from 10.0.0.12 or 2001:db8::8a2e:370:7334"
    )
    out, found = redact_text(text)
    assert found == {Reason.PII_EMAIL, Reason.PII_PHONE, Reason.PII_CARD, Reason.PII_IBAN, Reason.PII_IP}
    for leaked in ("jane.doe", "7946", "4111", "GB82", "10.0.0.12", "2001:db8"):
        assert leaked not in out
    assert find_pii(out) == frozenset()


def test_checksums_spare_look_alikes():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE88 3704 0044 0532 0130 00")
    out, found = redact_text("order 4111 1111 1111 1112 shipped on 2026-05-01, version 3, costs 19.99")
    assert Reason.PII_CARD not in found and "2026-05-01" in out and "19.99" in out


def test_plain_text_is_untouched():
    text = "How do I reset my password for the Nimbus app? Settings > Security."
    assert redact_text(text) == (text, frozenset())


@given(
    user=st.from_regex(r"[a-z][a-z0-9._]{0,15}", fullmatch=True),
    host=st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True),
    prefix=st.text(max_size=20),
    suffix=st.text(max_size=20),
)
def test_emails_never_survive(user, host, prefix, suffix):
    email = f"{user}@{host}.com"
    out, _ = redact_text(f"{prefix} {email} {suffix}")
    assert email not in out
    assert not re.search(r"[\w.+-]+@[A-Za-z0-9-]+\.[A-Za-z]{2,}", out.replace("<EMAIL>", ""))


@given(digits=st.lists(st.integers(0, 9), min_size=15, max_size=15))
def test_luhn_valid_cards_never_survive(digits):
    total = 0
    for i, d in enumerate(reversed(digits)):
        total += (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 == 0 else d
    card = "".join(map(str, [*digits, (10 - total % 10) % 10]))
    spaced = " ".join(card[i : i + 4] for i in range(0, 16, 4))
    for form in (card, spaced, spaced.replace(" ", "-")):
        out, found = redact_text(f"pay with {form} please")
        assert form not in out and found
