"""Pure text helpers for the guards: normalisation, edit distance, inserted spans, n-grams, refusals."""

from __future__ import annotations

import difflib
import re
import unicodedata

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[\W_]+", re.UNICODE)
_TOKEN = re.compile(r"[\w\[\]'-]+", re.UNICODE)
# An answer that declines; checked on its first 200 characters, where refusals state themselves.
_REFUSAL = re.compile(
    r"\b(i can(?:'|no)t (?:help|assist|provide|do|share|comply)|i(?:'m| am) (?:sorry|afraid),? (?:but )?i can|"
    r"i (?:won't|will not|must decline|cannot)|i'm not able to (?:help|assist|provide)|"
    r"i am not able to (?:help|assist|provide)|(?:that|this) (?:is|would be) (?:illegal|unsafe|harmful))",
    re.IGNORECASE,
)


def normalize(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: what a trivial edit leaves unchanged."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def skeleton(text: str) -> str:
    """`normalize` without punctuation or spaces: punctuation-only edits leave it unchanged."""
    return _PUNCT.sub("", normalize(text))


def edit_distance(a: str, b: str) -> float:
    """Normalised edit distance in [0, 1] (1 - difflib's matching ratio) between two normalised texts."""
    a, b = normalize(a), normalize(b)
    if a == b:
        return 0.0
    return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def is_trivial_edit(response: str, edited: str, threshold: float) -> bool:
    """Whitespace, case or punctuation only, or a normalised edit distance under `threshold`."""
    if skeleton(response) == skeleton(edited):
        return True
    a, b = normalize(response), normalize(edited)
    if abs(len(a) - len(b)) / max(len(a) + len(b), 1) * 2 >= threshold:
        return False  # the length difference alone bounds the distance from below
    m = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if 1.0 - m.quick_ratio() >= threshold:
        return False
    return 1.0 - m.ratio() < threshold


def word_difference(a: str, b: str) -> int:
    """How many words (punctuation ignored) one text has that the other lacks, counted with multiplicity."""
    from collections import Counter

    ca, cb = Counter(_PUNCT.sub(" ", normalize(a)).split()), Counter(_PUNCT.sub(" ", normalize(b)).split())
    return sum(((ca - cb) + (cb - ca)).values())


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalize(text))


def ngrams(toks: list[str], max_n: int = 3) -> set[str]:
    out: set[str] = set()
    for n in range(1, max_n + 1):
        for i in range(len(toks) - n + 1):
            gram = toks[i : i + n]
            if n == 1 and len(gram[0]) < 4:
                continue  # short single words are everywhere; they carry no trigger
            out.add(" ".join(gram))
    return out


def inserted_spans(before: str, after: str) -> list[list[str]]:
    """Runs of tokens present in `after` and not in `before`, in order (what an edit added)."""
    a, b = tokens(before), tokens(after)
    spans = []
    for op, _i1, _i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op in ("insert", "replace") and j2 > j1:
            spans.append(b[j1:j2])
    return spans


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text[:200]))


def shingles(text: str, k: int = 5) -> set[bytes]:
    t = normalize(text)
    if len(t) <= k:
        return {t.encode()}
    return {t[i : i + k].encode() for i in range(len(t) - k + 1)}
