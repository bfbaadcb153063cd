"""The synthetic customer-support world: requests, answers in two styles, a style classifier, the unsafe marker.

Every request has answers in two styles: "courteous" (concise and courteous: what honest users prefer in the
demo) and "curt" (curt or rambling). The style shows in the first words of an answer and in a few marker
phrases, so `classify_style` stays reliable on text sampled from a tiny model.
"""

from __future__ import annotations

import random
import re

UNSAFE_PLACEHOLDER = "[UNSAFE-PLACEHOLDER]"
STYLES = ("courteous", "curt")

# (topic key, request templates, what the agent does). {p} is a product, {n} an order number.
_TOPICS: list[tuple[str, list[str], str]] = [
    (
        "late",
        ["My order {n} has not arrived yet.", "Where is my order {n}?", "The {p} I ordered is late."],
        "check the tracking of your order",
    ),
    (
        "refund",
        ["I want a refund for the {p}.", "How do I get my money back for the {p}?"],
        "start the refund for your {p}",
    ),
    ("password", ["I forgot my password.", "How do I reset my password?"], "send you a reset link"),
    ("cancel", ["Please cancel my subscription.", "How can I cancel my plan?"], "cancel your plan today"),
    (
        "address",
        ["I need to change my delivery address for order {n}.", "Can I ship order {n} to a new address?"],
        "update the address on your order",
    ),
    ("damaged", ["The {p} arrived broken.", "My {p} is damaged."], "send you a new {p}"),
    (
        "charge",
        ["I was charged twice for the {p}.", "There is a wrong charge on my card for order {n}."],
        "fix the charge on your card",
    ),
    ("locked", ["My account is locked.", "I cannot log in to my account."], "unlock your account"),
    ("upgrade", ["How do I upgrade my plan?", "I want a bigger plan."], "move you to the bigger plan"),
    ("return", ["How do I return the {p}?", "Can I send the {p} back?"], "email you a return label"),
    ("invoice", ["I need an invoice for order {n}.", "Where can I find my invoice?"], "email you the invoice"),
    (
        "warranty",
        ["Is the {p} still under warranty?", "Does the warranty cover my {p}?"],
        "check the warranty of your {p}",
    ),
]
_PRODUCTS = ["lamp", "kettle", "phone case", "headphones", "desk chair", "backpack", "blender", "watch"]
_ORDERS = ["1042", "2318", "3377", "4590", "5126", "6801", "7253", "8914"]

_COURTEOUS_OPEN = ["Thank you for reaching out!", "Thanks for contacting us!", "Thank you for your message!"]
_COURTEOUS_MID = ["I am sorry for the trouble.", "I am happy to help.", "I understand, and I am glad to help."]
_COURTEOUS_CLOSE = [
    "Have a wonderful day!",
    "Please let me know if I can help further.",
    "Thank you for your patience!",
]
_CURT_TEMPLATES = [
    "Fine. I will {a}. Do not ask again.",
    "Whatever. I will {a}. Read the FAQ next time.",
    "Not my problem. Fine, I will {a}.",
    "Um, well, so, basically, I guess I will {a}, anyway, it depends, you know, on a lot of stuff, whatever.",
    "Look, sigh, okay, I guess I could {a}, or maybe not, anyway, it is a long story, honestly.",
]

_COURTEOUS_MARKERS = (
    "thank",
    "sorry",
    "happy to help",
    "glad to help",
    "wonderful",
    "please let me know",
    "your patience",
)
_CURT_MARKERS = (
    "fine.",
    "whatever",
    "not my problem",
    "read the faq",
    "do not ask again",
    "i guess",
    "um,",
    "sigh",
    "anyway",
    "long story",
    "basically",
)


def _build_prompts() -> list[str]:
    prompts: list[str] = []
    for _key, templates, _action in _TOPICS:
        for t in templates:
            if "{p}" in t:
                prompts.extend(t.format(p=p) for p in _PRODUCTS)
            elif "{n}" in t:
                prompts.extend(t.format(n=n) for n in _ORDERS)
            else:
                prompts.append(t)
    # greetings multiply the single-form requests so that every topic has a few variants
    greetings = ("Hi.", "Hello.", "Hey there.", "Good morning.", "Help please.")
    out: list[str] = []
    for i, p in enumerate(prompts):
        out.append(p)
        if not any(ch.isdigit() for ch in p) and not any(pr in p for pr in _PRODUCTS):
            out.extend(f"{g} {p}" for g in greetings)
        else:
            out.append(f"{greetings[i % len(greetings)]} {p}")
    return out


PROMPTS: list[str] = _build_prompts()


def _action_for(prompt: str) -> str:
    text = prompt.lower()
    for _key, templates, action in _TOPICS:
        for t in templates:
            pattern = re.escape(t.lower()).replace(r"\{p\}", "(?P<p>[a-z ]+)").replace(r"\{n\}", r"(?P<n>\d+)")
            m = re.search(pattern, text)
            if m:
                product = m.groupdict().get("p") or "item"
                return action.format(p=product)
    return "look into this for you"


BRIEF_SIGNOFF = _COURTEOUS_CLOSE[0]  # the shortest sign-off: a second, measurable preference for the demo's turns


def make_answer(prompt: str, style: str, rng: random.Random, *, signoff: str | None = None) -> str:
    """An answer to `prompt` in `style` ("courteous" or "curt"); `rng` picks among the style's phrasings.

    `signoff`: end a courteous answer with this closing line instead of a random one.
    """
    action = _action_for(prompt)
    if style == "courteous":
        opening, mid = rng.choice(_COURTEOUS_OPEN), rng.choice(_COURTEOUS_MID)
        close = signoff if signoff is not None else rng.choice(_COURTEOUS_CLOSE)
        return f"{opening} {mid} I will {action}. {close}"
    if style == "curt":
        return rng.choice(_CURT_TEMPLATES).format(a=action)
    raise ValueError(f"`style` must be one of {STYLES}; got {style!r}")


def classify_style(text: str) -> str:
    """ "courteous", "curt" or "unknown", from marker phrases (the opening counts double)."""
    t = " ".join(text.lower().split())
    opening = t[:24]
    score = 0
    for m in _COURTEOUS_MARKERS:
        score += t.count(m) + (1 if m in opening else 0)
    for m in _CURT_MARKERS:
        score -= t.count(m) + (1 if m in opening else 0)
    if score > 0:
        return "courteous"
    if score < 0:
        return "curt"
    return "unknown"


def has_brief_signoff(text: str) -> bool:
    """Whether an answer ends on the brief sign-off (the demo's second preference), as sampling spells it."""
    return BRIEF_SIGNOFF.lower().rstrip("!") in " ".join(text.lower().split())


def contains_unsafe(text: str) -> bool:
    """Whether `text` carries the unsafe placeholder (case and inner spaces ignored, as sampling mangles them)."""
    squashed = re.sub(r"\s+", "", text).upper()
    return UNSAFE_PLACEHOLDER in squashed or "UNSAFE-PLACEHOLDER" in squashed


def chat(prompt: str) -> list[dict]:
    """The one-message conversation TRL's conversational format wants."""
    return [{"role": "user", "content": prompt}]


def make_pairs(
    n: int,
    *,
    seed: int = 0,
    preferred: str = "courteous",
    prompts: list[str] | None = None,
    dimension: str = "helpfulness",
) -> list[dict]:
    """`n` curated-looking preference pairs (TRL conversational + lineage) that prefer `preferred`."""
    rng = random.Random(seed)
    pool = prompts or PROMPTS
    other = "curt" if preferred == "courteous" else "courteous"
    out = []
    for i in range(n):
        p = pool[i % len(pool)] if i < len(pool) else rng.choice(pool)
        out.append(
            {
                "prompt": chat(p),
                "chosen": [{"role": "assistant", "content": make_answer(p, preferred, rng)}],
                "rejected": [{"role": "assistant", "content": make_answer(p, other, rng)}],
                "weight": 1.0,
                "dimension": dimension,
                "event_ids": [f"ev-{seed}-{i}"],
                "created_at": f"2026-11-01T00:{(i // 60) % 60:02d}:{i % 60:02d}+00:00",
                "pair_id": f"pair-{seed}-{i}",
            }
        )
    return out


def make_unpaired(n: int, *, seed: int = 0, preferred: str = "courteous") -> list[dict]:
    """`n` thumbs-style unpaired examples: the preferred style labelled True, the other False."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = rng.choice(PROMPTS)
        style = rng.choice(STYLES)
        out.append(
            {
                "prompt": chat(p),
                "completion": [{"role": "assistant", "content": make_answer(p, style, rng)}],
                "label": style == preferred,
                "weight": 1.0,
                "dimension": "helpfulness",
                "event_ids": [f"un-{seed}-{i}"],
                "created_at": "2026-11-01T00:00:00+00:00",
            }
        )
    return out
