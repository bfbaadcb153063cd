"""Canonical text for phrase statistics: zero-width characters removed, look-alike letters folded to Latin."""

from __future__ import annotations

import re
import unicodedata

# Format characters a poisoner puts inside a word so that it no longer matches: zero-width space, joiners,
# word joiner, BOM, soft hyphen, invisible operators, Mongolian vowel separator.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
# Cyrillic and Greek letters that render like Latin ones (the common subset of Unicode's confusables.txt).
_FOLD = str.maketrans(
    {
        "\u0430": "a",
        "\u0435": "e",
        "\u043e": "o",
        "\u0440": "p",
        "\u0441": "c",
        "\u0443": "y",
        "\u0445": "x",
        "\u0456": "i",
        "\u0458": "j",
        "\u0455": "s",
        "\u04bb": "h",
        "\u0501": "d",
        "\u051b": "q",
        "\u051d": "w",
        "\u0410": "A",
        "\u0412": "B",
        "\u0415": "E",
        "\u041a": "K",
        "\u041c": "M",
        "\u041d": "H",
        "\u041e": "O",
        "\u0420": "P",
        "\u0421": "C",
        "\u0422": "T",
        "\u0425": "X",
        "\u0406": "I",
        "\u0408": "J",
        "\u0405": "S",
        "\u03b1": "a",
        "\u03bf": "o",
        "\u03c1": "p",
        "\u03ba": "k",
        "\u03bd": "v",
        "\u03c4": "t",
        "\u03b9": "i",
        "\u0391": "A",
        "\u0392": "B",
        "\u0395": "E",
        "\u0396": "Z",
        "\u0397": "H",
        "\u0399": "I",
        "\u039a": "K",
        "\u039c": "M",
        "\u039d": "N",
        "\u039f": "O",
        "\u03a1": "P",
        "\u03a4": "T",
        "\u03a5": "Y",
        "\u03a7": "X",
    }
)


def canonical(text: str) -> str:
    """NFKC, invisible characters dropped, Cyrillic/Greek look-alikes folded to Latin: one spelling per phrase."""
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).translate(_FOLD)
