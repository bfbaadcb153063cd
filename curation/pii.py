"""PII redaction, fully offline: e-mail, phone, card numbers (Luhn), IBAN (mod 97) and IP addresses;
keyed pseudonyms for identifiers; redaction of decoded JSON and of error messages.

Redaction always runs on decoded text: a JSON escape (`\u0040` for `@`) hides nothing once decoded.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from typing import Any

from curation.reasons import Reason

# Order matters: IBANs and cards are long digit runs that the phone pattern would also take.
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}")
_PHONE = re.compile(r"(?<![\w+(-])(?:\+|00|\()?\d[\d \-./()]{6,18}\d(?![\w-])")

TOKENS = {
    Reason.PII_EMAIL: "<EMAIL>",
    Reason.PII_IBAN: "<IBAN>",
    Reason.PII_CARD: "<CARD>",
    Reason.PII_IP: "<IP>",
    Reason.PII_PHONE: "<PHONE>",
}


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


# ------------------------------------------------------------------ identifiers
# the identifiers an event carries, each pseudonymised under its own name (a user id is never a device id)
IDENTIFIERS = {"user_id": "u", "session_id": "s", "device_id": "d", "ip_hash": "ip"}


def pseudonymise(key: bytes, field: str, value: str) -> str:
    """A stable stand-in for an identifier: the same id under the same key is the same pseudonym (the guards
    count per account and per source), and without the key it cannot be turned back or recomputed."""
    digest = hmac.new(key, f"{field}\x00{value}".encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"{IDENTIFIERS.get(field, 'x')}_{digest[:32]}"


# ------------------------------------------------------------------ decoded JSON and unreadable input
def redact_json(value: Any) -> tuple[Any, frozenset[Reason]]:
    """Every string of a decoded JSON value (keys too) redacted; numbers that read as PII become tokens."""
    found: set[Reason] = set()

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            out, hits = redact_text(v)
            found.update(hits)
            return out
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, int | float):  # a phone or a card sent as a JSON number
            out, hits = redact_text(str(v))
            found.update(hits)
            return out if hits else v
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(value), frozenset(found)


def pseudonymise_event(data: dict, key: bytes) -> dict:
    """A decoded (possibly invalid) event with its identifiers pseudonymised where they are strings."""
    out = dict(data)
    for name in ("user_id", "session_id"):
        if isinstance(out.get(name), str):
            out[name] = pseudonymise(key, name, out[name])
    if isinstance(out.get("client"), dict):
        client = dict(out["client"])
        for name in ("device_id", "ip_hash"):
            if isinstance(client.get(name), str):
                client[name] = pseudonymise(key, name, client[name])
        out["client"] = client
    return out


_IDENT = re.compile(r'"(user_id|session_id|device_id|ip_hash)"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r'\\(u[0-9a-fA-F]{4}|["\\/bfnrt])')
_SIMPLE = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def unescape_json_text(text: str) -> str:
    """Best-effort decoding of JSON string escapes in text that does not parse (truncated, broken)."""

    def sub(m: re.Match[str]) -> str:
        e = m.group(1)
        return chr(int(e[1:], 16)) if e[0] == "u" else _SIMPLE[e]

    return _ESCAPE.sub(sub, text)


def redact_raw(text: str, key: bytes) -> str:
    """Raw input for the rejected and dead-letter topics: decoded first, identifiers pseudonymised, PII redacted.

    JSON is decoded and re-encoded (so escapes cannot hide anything); text that does not parse has its escapes
    decoded as well as they can be before redaction. Pseudonyms are made from the decoded ids, as for a valid
    event, and put in after redaction (a pseudonym's hex digits could look like a card number).
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        ids: list[str] = []

        def ident(m: re.Match[str]) -> str:
            ids.append(pseudonymise(key, m.group(1), unescape_json_text(m.group(2))))
            return f'"{m.group(1)}":"\ue000{len(ids) - 1}\ue001"'

        out = redact_text(unescape_json_text(_IDENT.sub(ident, text)))[0]
        return re.sub("\ue000(\\d+)\ue001", lambda m: ids[int(m.group(1))], out)
    redacted = redact_json(data)[0]
    if isinstance(data, dict):
        pseudonyms = pseudonymise_event(data, key)
        for name in ("user_id", "session_id"):
            if isinstance(data.get(name), str):
                redacted[name] = pseudonyms[name]
        if isinstance(data.get("client"), dict):
            for name in ("device_id", "ip_hash"):
                if isinstance(data["client"].get(name), str):
                    redacted["client"][name] = pseudonyms["client"][name]
    return json.dumps(redacted, ensure_ascii=False)


def safe_errors(errors: list[dict]) -> list[dict]:
    """Contract errors without the values they saw: the field path and the rule, PII redacted from both.

    The rules' messages put the value last, after `; got `; an error names a field that may hold PII, so for the
    rejected topic the value is left out rather than trusted to the redactor.
    """
    out = []
    for e in errors:
        loc = redact_text(unescape_json_text(str(e.get("loc", ""))))[0]
        msg = str(e.get("msg", "")).split("; got ", 1)[0]
        out.append({"loc": loc, "msg": redact_text(unescape_json_text(msg))[0]})
    return out
