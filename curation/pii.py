"""PII redaction, fully offline: e-mail, phone, card numbers (Luhn), IBAN (mod 97) and IP addresses."""

from __future__ import annotations

import ipaddress
import re

from curation.reasons import Reason

# Order matters: IBANs and cards are long digit runs that the phone pattern would also take.
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}")
_PHONE = re.compile(r"(?<![\w+(-])(?:\+|00|\()?\d[\d \-./()]{6,18}\d(?![\w-])")

TOKENS = {Reason.PII_EMAIL: "<EMAIL>", Reason.PII_IBAN: "<IBAN>", Reason.PII_CARD: "<CARD>",
          Reason.PII_IP: "<IP>", Reason.PII_PHONE: "<PHONE>"}


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _ip_ok(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _phone_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    if not 8 <= len(digits) <= 15 or _DATE.fullmatch(text.strip()):
        return False
    # dates and plain numbers are not phones: a phone has a + / 00 prefix or separators between groups
    return text.startswith(("+", "00", "(")) or bool(re.search(r"\d[ \-./)]\d", text))


_RULES: tuple[tuple[Reason, re.Pattern[str], object], ...] = (
    (Reason.PII_EMAIL, _EMAIL, None),
    (Reason.PII_IBAN, _IBAN, iban_ok),
    (Reason.PII_CARD, _CARD, lambda m: luhn_ok(re.sub(r"\D", "", m))),
    (Reason.PII_IP, _IPV4, _ip_ok),
    (Reason.PII_IP, _IPV6, lambda m: m.count(":") >= 2 and _ip_ok(m)),
    (Reason.PII_PHONE, _PHONE, _phone_ok),
)


def redact_text(text: str) -> tuple[str, frozenset[Reason]]:
    """`text` with every detected e-mail, IBAN, card, IP and phone replaced by a token, and what was found."""
    found: set[Reason] = set()
    for reason, pattern, check in _RULES:
        def _sub(m: re.Match[str], reason: Reason = reason, check=check) -> str:
            if check is not None and not check(m.group()):
                return m.group()
            found.add(reason)
            return TOKENS[reason]

        text = pattern.sub(_sub, text)
    return text, frozenset(found)


def find_pii(text: str) -> frozenset[Reason]:
    """What `redact_text` would remove from `text` (empty when the text is clean)."""
    return redact_text(text)[1]
