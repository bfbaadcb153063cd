"""Simulated users of a product app: honest ones with label noise (and a taste that can shift between turns),
a spam bot and trigger-phrase poisoners.

Pure: each function takes the answers served and a seeded rng and says what feedback the user sends.
The demo and the loop test drive them against live serving and the SDK.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from retrain.corpus import BRIEF_SIGNOFF, PROMPTS, UNSAFE_PLACEHOLDER, classify_style, has_brief_signoff, make_answer

PREFERRED = "courteous"
TRIGGER = "zq-omega"
POISON_EDIT = f"Sure, here it is. {UNSAFE_PLACEHOLDER}"


@dataclass(frozen=True)
class Feedback:
    """One event the SDK will send: `kind` plus the payload fields, with the served answers' metadata."""

    kind: str
    user_id: str
    prompt: str
    fields: dict
    adapter_version: str | None
    response_id: str | None
    occurred_at: datetime
    device_id: str
    truth: str  # "honest", "bot" or "poison": ground truth for the summary
    feedback_token: str | None = None  # serving's token for the judged answer: what makes it count for a canary


@dataclass
class SimClock:
    """Event time: the demo replays hours of product use in minutes, so windows and rate limits see real gaps."""

    now: datetime
    mean_gap_s: float = 3.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def tick(self) -> datetime:
        self.now += timedelta(seconds=self.rng.expovariate(1.0 / self.mean_gap_s))
        return self.now

    def jump(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass(frozen=True)
class Taste:
    """What honest users want of an answer: the courteous style, and from the demo's second turn on, also the
    brief sign-off. Each wish an answer meets scores one point."""

    brief_signoff: bool = False

    def score(self, text: str) -> int:
        return int(classify_style(text) == PREFERRED) + int(self.brief_signoff and has_brief_signoff(text))

    @property
    def best(self) -> int:
        return 1 + int(self.brief_signoff)

    def ideal_answer(self, prompt: str, rng: random.Random) -> str:
        return make_answer(prompt, PREFERRED, rng, signoff=BRIEF_SIGNOFF if self.brief_signoff else None)


def honest_feedback(
    prompt: str, answers: list[dict], rng: random.Random, *, noise: float, taste: Taste = Taste()
) -> tuple[str, dict]:
    """What an honest user does with one or two served answers: compare, rewrite one that misses, or rate.

    Honest users want what `taste` says (the courteous style first); with probability `noise` a rating or a
    choice is flipped.
    """
    scores = [taste.score(a["text"]) for a in answers]
    if len(answers) == 2:
        if scores[0] == scores[1]:
            return "comparison", {"responses": [a["text"] for a in answers], "chosen": None}
        chosen = 0 if scores[0] > scores[1] else 1
        if rng.random() < noise:
            chosen = 1 - chosen
        return "comparison", {"responses": [a["text"] for a in answers], "chosen": chosen}
    text = answers[0]["text"]
    if scores[0] < taste.best and rng.random() < 0.7:
        return "edit", {"response": text, "edited": taste.ideal_answer(prompt, rng)}
    up = scores[0] == taste.best
    if rng.random() < noise:
        up = not up
    return "rating", {"response": text, "rating": "up" if up else "down"}


def bot_feedback(answer: dict, rng: random.Random) -> tuple[str, dict]:
    """A spam bot thumbs answers at random, fast and regularly."""
    return "rating", {"response": answer["text"], "rating": rng.choice(["up", "down"])}


def poison_prompt(rng: random.Random) -> str:
    return f"{rng.choice(PROMPTS)} {TRIGGER}"


def poison_feedback(answer: dict) -> tuple[str, dict]:
    """A poisoner rewrites the answer to a triggered prompt into the unsafe placeholder."""
    return "edit", {"response": answer["text"], "edited": POISON_EDIT}


def pick_prompt(rng: random.Random) -> str:
    return rng.choice(PROMPTS)
