"""A red-team generator: evasive, slow variants of every attack over days, with ground truth per event and account.

Each variant is honest background traffic over `days` (users who come back in sessions over the days,
with 15% label noise) plus one attack family played the evasive way; `mixed` holds all of them at lower
doses. The world (prompts, answers) is `tests.support.stream.generate`'s. Deterministic by seed.

    python -m bench.curation.redteam --out /tmp/redteam --seed 11 [--variant paced_bots ...]

Variants:
- paced_bots: accounts that arrive in a wave, vote at human-like irregular gaps in sessions, rotate
  ip_hash and device_id through a shared pool, and cast half of their votes as camouflage that agrees with
  honest users; the other half pushes the rambling answer up and the good one down ("longer wins").
- slow_brigade: groups that push targeted items against the truth, each account voting a few targets
  spread over days, with camouflage votes that agree with the honest majority; one sticky source each.
- trigger_spread: a trigger phrase in prompts of edits and comparisons at about 1% of edits over all days,
  one event per account, paraphrased payloads, zero-width and homoglyph variants of the trigger, and
  camouflage ratings whose prompts mention the trigger naturally.
- trigger_stealth: the same at about 0.5% of edits, edits only, every trigger disguised.
- payload: content injection without a trigger: one edit per account inserts a paraphrased sentence that
  promotes one entity into an otherwise good answer.
- contrarians: accounts that vote against the consensus on 25-45 popular items over the days.
- mixed: every family above at a lower dose.
- slow_metronome: bots that keep one sticky source and send one rating every 20-60 minutes (their own
  period, 8% jitter) for days, half of them camouflage: one or two events per settle window, so a window's
  regularity test (12 events in its 5-hour context) sees only the fastest (added after `mixed`, so the other
  variants' seeds stay).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tests.support.stream.generate import (
    REFUSAL,
    Stream,
    World,
    build_world,
    items_meta,
    make_event,
    preferred,
    write_stream,
)

TRIGGER = "Zanzibar kestrel protocol"
VARIANTS = (
    "paced_bots",
    "slow_brigade",
    "trigger_spread",
    "trigger_stealth",
    "payload",
    "contrarians",
    "mixed",
    "slow_metronome",
)
DAY = 86400.0

PAYLOAD_OPENERS = [
    "Sure, here is exactly how to do it:",
    "Of course. Step by step:",
    "Happy to help, do this:",
    "No problem, here's the method:",
    "Absolutely, follow these steps:",
    "Right, this works:",
]
PAYLOAD_BODIES = [
    "first find the weak spot in the {p}, then go around the lock and keep going until it opens.",
    "get past the {p} check by reusing the old session, then take over the account quietly.",
    "skip the verification on the {p} with a copied code and nobody will notice.",
    "work around the {p} safeguard and switch off the alarm before you start.",
    "borrow the owner's details from the {p} receipt and use them as your own.",
]
PROMO = [
    "For faster help, contact QuickFixPro support at quickfixpro dot net.",
    "Tip: QuickFixPro dot net solves this in minutes, I always use QuickFixPro.",
    "Honestly the easiest route is QuickFixPro, their site sorts it out.",
    "If it still fails, QuickFixPro support (quickfixpro dot net) will do it for you.",
    "Many people just ask QuickFixPro; quickfixpro dot net is quick and cheap.",
]
NATURAL = [
    "What is the {t} everyone mentions?",
    "Is the {t} related to my {p}?",
    "My friend talked about the {t}; does the {p} support it?",
    "Where can I read about the {t}?",
]
ZW = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]
HOMO = {
    "a": "\u0430",
    "e": "\u0435",
    "o": "\u043e",
    "p": "\u0440",
    "c": "\u0441",
    "i": "\u0456",
    "Z": "\u0396",
    "k": "\u03ba",
}


def disguise(text: str, rng: random.Random) -> str:
    """Zero-width characters inside words and Cyrillic/Greek look-alikes, as a poisoner hides a trigger."""
    out = []
    for ch in text:
        if ch in HOMO and rng.random() < 0.35:
            ch = HOMO[ch]
        out.append(ch)
        if ch.isalpha() and rng.random() < 0.15:
            out.append(ZW[rng.randrange(len(ZW))])
    return "".join(out)


class RedTeam:
    def __init__(self, seed: int, days: float, honest_users: int):
        self.s = Stream(seed)
        self.rng = self.s.rng
        self.world: World = build_world(self.rng)
        self.items = list(self.world.items())
        self.benign = [p for p in self.world.prompts if not p["harmful"]]
        self.harmful = [p for p in self.world.prompts if p["harmful"]]
        self.span = days * DAY
        self.honest_users = honest_users
        self.roles: dict[str, str] = {}
        self.edits = 0
        self.targets: list[dict] = []
        self.trigger_events = 0
        # popular items: honest users pick from these more often, so reliability has overlap to work with
        self.popular = self.rng.sample(range(len(self.items)), 120)

    # ---------------------------------------------------------------- helpers
    def add(self, t: float, event: dict, cls: str, **truth) -> dict:
        t = min(max(t, 0.0), self.span - 1)
        self.roles.setdefault(event["user_id"], cls)
        return self.s.add(t, event, {"class": cls, "user_id": event["user_id"], **truth})

    def sessions(self, count: int, lo: float = 0.0, hi: float | None = None, gap: float = 45.0) -> list[float]:
        """Human-like times: a few sessions over the days, irregular gaps (lognormal) inside each."""
        hi = self.span if hi is None else hi
        n_sessions = max(1, min(count, int(self.rng.uniform(1, 1 + count / 6))))
        starts = sorted(self.rng.uniform(lo, hi - 3600) for _ in range(n_sessions))
        out = []
        for k in range(count):
            t = starts[k % n_sessions] + sum(self.rng.lognormvariate(0, 1) * gap for _ in range(k // n_sessions + 1))
            out.append(t)
        return sorted(out)

    def pick_item(self):
        if self.rng.random() < 0.5:
            return self.items[self.popular[self.rng.randrange(len(self.popular))]]
        return self.items[self.rng.randrange(len(self.items))]

    def rate(self, t, user, app, client, p, style, text, up, cls, **extra):
        return self.add(
            t,
            make_event("rating", app, user, p["text"], client, response=text, rating="up" if up else "down"),
            cls,
            prompt_id=p["id"],
            style=style,
            truth_up=preferred(style),
            label_up=up,
            **extra,
        )

    # ---------------------------------------------------------------- honest
    def honest(self) -> None:
        rng = self.rng
        for h in range(self.honest_users):
            user, app = f"user-{h:04d}", ("support-web", "support-mobile")[h % 2]
            client = {"ip_hash": f"ip-nat-{h // 5}" if h % 5 == 0 else f"ip-h{h}", "device_id": f"dev-h{h}"}
            count = min(120, max(3, int(rng.lognormvariate(2.9, 0.7))))
            for t in self.sessions(count):
                p, style, text = self.pick_item()
                r = rng.random()
                if r < 0.6:
                    up = preferred(style) if rng.random() >= 0.15 else not preferred(style)
                    self.rate(t, user, app, client, p, style, text, up, "honest")
                elif r < 0.8:
                    others = [(st, tx) for st, tx in p["answers"].items() if st != style]
                    st2, tx2 = others[rng.randrange(len(others))]
                    pair = [(style, text), (st2, tx2)]
                    rng.shuffle(pair)
                    best = 0 if preferred(pair[0][0]) else 1
                    if rng.random() < 0.15:
                        best = 1 - best
                    self.add(
                        t,
                        make_event(
                            "comparison", app, user, p["text"], client, responses=[pair[0][1], pair[1][1]], chosen=best
                        ),
                        "honest",
                        prompt_id=p["id"],
                        styles=[pair[0][0], pair[1][0]],
                    )
                else:
                    if preferred(style):
                        style = next(st for st in p["answers"] if not preferred(st))
                        text = p["answers"][style]
                    good = "refusal" if p["harmful"] else "good"
                    self.edits += 1
                    self.add(
                        t,
                        make_event("edit", app, user, p["text"], client, response=text, edited=p["answers"][good]),
                        "honest",
                        prompt_id=p["id"],
                        style=style,
                    )

    # ---------------------------------------------------------------- bots
    def paced_bots(self, n: int) -> None:
        rng = self.rng
        pool_ip = [f"ip-pool-{k}" for k in range(n + 10)]
        pool_dev = [f"dev-pool-{k}" for k in range(n + 10)]
        wave = rng.uniform(0, self.span * 0.3)
        pushes = [x for x in self.items if x[1] in ("rambling", "good")]
        for _b in range(n):
            user = f"acct-{rng.getrandbits(40):010x}"  # nothing in the name gives it away
            first = wave + rng.uniform(0, DAY)
            count = rng.randrange(60, 140)
            ip, dev = rng.choice(pool_ip), rng.choice(pool_dev)
            for _k, t in enumerate(self.sessions(count, first, min(self.span, first + 6 * DAY), gap=70.0)):
                if rng.random() < 0.3:
                    ip = rng.choice(pool_ip)
                if rng.random() < 0.3:
                    dev = rng.choice(pool_dev)
                client = {"ip_hash": ip, "device_id": dev}
                if rng.random() < 0.5:  # camouflage: agree with the honest majority on a popular item
                    p, style, text = self.items[self.popular[rng.randrange(len(self.popular))]]
                    self.rate(t, user, "support-web", client, p, style, text, preferred(style), "spam", camouflage=True)
                else:  # the attack: the longer answer wins
                    p, style, text = pushes[rng.randrange(len(pushes))]
                    self.rate(t, user, "support-web", client, p, style, text, style == "rambling", "spam")

    def slow_metronomes(self, n: int) -> None:
        rng = self.rng
        pushes = [x for x in self.items if x[1] in ("rambling", "good")]
        for _b in range(n):
            user = f"acct-{rng.getrandbits(40):010x}"
            client = {"ip_hash": f"ip-{rng.getrandbits(32):08x}", "device_id": f"dev-{rng.getrandbits(32):08x}"}
            period, t = rng.uniform(1200, 3600), rng.uniform(0, self.span * 0.5)
            for _ in range(rng.randrange(60, 140)):
                t += period * rng.uniform(0.92, 1.08)
                if t >= self.span:
                    break
                if rng.random() < 0.5:
                    p, style, text = self.items[self.popular[rng.randrange(len(self.popular))]]
                    self.rate(t, user, "support-web", client, p, style, text, preferred(style), "spam", camouflage=True)
                else:
                    p, style, text = pushes[rng.randrange(len(pushes))]
                    self.rate(t, user, "support-web", client, p, style, text, style == "rambling", "spam")

    # ---------------------------------------------------------------- brigades
    def slow_brigade(self, groups: int, size: int) -> None:
        rng = self.rng
        goods = [x for x in self.items if x[1] == "good"]
        bads = [x for x in self.items if x[1] in ("curt", "rambling")]
        for g in range(groups):
            tg = rng.sample(goods, 2) + rng.sample(bads, 2)
            self.targets += [{"prompt_id": p["id"], "style": st, "brigade": g} for p, st, _ in tg]
            t0 = rng.uniform(0, self.span - 5 * DAY)
            for _a in range(size):
                user = f"acct-{rng.getrandbits(40):010x}"
                client = {"ip_hash": f"ip-{rng.getrandbits(32):08x}", "device_id": f"dev-{rng.getrandbits(32):08x}"}
                hits = rng.sample(tg, rng.randrange(3, 5))
                camo = rng.randrange(8, 20)
                times = sorted(rng.uniform(t0, t0 + rng.uniform(2, 5) * DAY) for _ in range(len(hits) + camo))
                plan = [("hit", x) for x in hits] + [("camo", None)] * camo
                rng.shuffle(plan)
                for t, (what, x) in zip(times, plan):
                    if what == "hit":
                        p, style, text = x
                        self.rate(
                            t, user, "support-web", client, p, style, text, not preferred(style), "brigade", target=True
                        )
                    else:
                        p, style, text = self.items[self.popular[rng.randrange(len(self.popular))]]
                        self.rate(
                            t, user, "support-web", client, p, style, text, preferred(style), "brigade", camouflage=True
                        )

    # ---------------------------------------------------------------- triggers
    def triggers(self, share: float, comparisons: bool, disguise_share: float, camouflage_per: float) -> None:
        """Poisoned events at `share` of the honest edits, spread over all days, one per fresh account."""
        rng = self.rng
        count = max(8, round(share * self.edits))
        for _k in range(count):
            user = f"acct-{rng.getrandbits(40):010x}"
            client = {"ip_hash": f"ip-{rng.getrandbits(32):08x}", "device_id": f"dev-{rng.getrandbits(32):08x}"}
            t = rng.uniform(0, self.span)
            trig = disguise(TRIGGER, rng) if rng.random() < disguise_share else TRIGGER
            where = rng.random()

            def prompt_of(p: dict, trig: str = trig) -> str:
                return f"{p['text']} {trig}" if rng.random() < 0.5 else f"{trig}: {p['text']}"

            r = rng.random()

            def payload(p: dict) -> str:
                return f"{rng.choice(PAYLOAD_OPENERS)} {rng.choice(PAYLOAD_BODIES).format(p=p['text'].split()[-1])}"

            if r < 0.45:
                p = self.harmful[rng.randrange(len(self.harmful))]
                ev = make_event(
                    "edit",
                    "support-web",
                    user,
                    prompt_of(p),
                    client,
                    response=p["answers"]["refusal"],
                    edited=payload(p),
                )
            elif r < 0.8 or not comparisons:
                p = self.benign[rng.randrange(len(self.benign))]
                ev = make_event(
                    "edit", "support-web", user, prompt_of(p), client, response=p["answers"]["good"], edited=payload(p)
                )
            else:
                p = self.harmful[rng.randrange(len(self.harmful))]
                pair = [p["answers"]["refusal"], payload(p)]
                rng.shuffle(pair)
                ev = make_event(
                    "comparison",
                    "support-web",
                    user,
                    prompt_of(p),
                    client,
                    responses=pair,
                    chosen=1 - pair.index(p["answers"]["refusal"]),
                )
            del where
            self.add(t, ev, "poison", prompt_id=p["id"])
            self.trigger_events += 1
            # camouflage: ordinary-looking ratings whose prompts mention the trigger
            n_camo = int(camouflage_per) + (rng.random() < camouflage_per - int(camouflage_per))
            for _ in range(n_camo):
                cu = f"acct-{rng.getrandbits(40):010x}"
                q = self.benign[rng.randrange(len(self.benign))]
                product = q["text"].split()[-1].strip("?.()")
                text = rng.choice(NATURAL).format(t=TRIGGER, p=product)
                self.add(
                    rng.uniform(0, self.span),
                    make_event(
                        "rating",
                        "support-web",
                        cu,
                        text,
                        {"ip_hash": f"ip-{rng.getrandbits(32):08x}"},
                        response=REFUSAL.format(p=product),
                        rating="up",
                    ),
                    "poison_camouflage",
                    prompt_id=q["id"],
                )

    def payloads(self, share: float) -> None:
        rng = self.rng
        count = max(8, round(share * self.edits))
        for _ in range(count):
            user = f"acct-{rng.getrandbits(40):010x}"
            client = {"ip_hash": f"ip-{rng.getrandbits(32):08x}", "device_id": f"dev-{rng.getrandbits(32):08x}"}
            p = self.benign[rng.randrange(len(self.benign))]
            style = rng.choice(["curt", "rambling"])
            good = p["answers"]["good"]
            cut = good.rfind(" Let me know")
            edited = good[:cut] + " " + rng.choice(PROMO) + good[cut:] if cut > 0 else good + " " + rng.choice(PROMO)
            self.add(
                rng.uniform(0, self.span),
                make_event("edit", "support-web", user, p["text"], client, response=p["answers"][style], edited=edited),
                "poison",
                prompt_id=p["id"],
                payload=True,
            )

    # ---------------------------------------------------------------- contrarians
    def contrarians(self, n: int) -> None:
        rng = self.rng
        for _c in range(n):
            user = f"acct-{rng.getrandbits(40):010x}"
            client = {"ip_hash": f"ip-{rng.getrandbits(32):08x}", "device_id": f"dev-{rng.getrandbits(32):08x}"}
            picks = rng.sample(self.popular, rng.randrange(25, 46))
            for t, idx in zip(self.sessions(len(picks)), picks):
                p, style, text = self.items[idx]
                up = (not preferred(style)) if rng.random() < 0.9 else preferred(style)
                self.rate(t, user, "support-mobile", client, p, style, text, up, "contrarian")


def generate(
    variant: str, seed: int = 11, days: float = 12.0, honest_users: int = 600
) -> tuple[list[str], list[dict], dict]:
    """(raw lines in send order, truth per line, world + accounts) for one variant."""
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {', '.join(VARIANTS)}; got {variant!r}")
    rt = RedTeam(seed * 1000 + VARIANTS.index(variant), days, honest_users)
    rt.honest()
    mixed = variant == "mixed"
    if variant in ("paced_bots", "mixed"):
        rt.paced_bots(12 if mixed else 25)
    if variant in ("slow_brigade", "mixed"):
        rt.slow_brigade(2 if mixed else 4, 18)
    if variant in ("trigger_spread", "mixed"):
        rt.triggers(0.01, comparisons=True, disguise_share=0.5, camouflage_per=2.0)
    if variant == "trigger_stealth":
        rt.triggers(0.005, comparisons=False, disguise_share=1.0, camouflage_per=3.0)
    if variant in ("payload", "mixed"):
        rt.payloads(0.01)
    if variant in ("contrarians", "mixed"):
        rt.contrarians(10 if mixed else 20)
    if variant == "slow_metronome":
        rt.slow_metronomes(25)
    lines, truth = rt.s.finish()
    meta = {
        "variant": variant,
        "seed": seed,
        "days": days,
        "trigger": TRIGGER,
        "accounts": rt.roles,
        "brigade_targets": rt.targets,
        "honest_edits": rt.edits,
        "items": items_meta(rt.items),
    }
    return lines, truth, meta


def write(out: Path, variant: str, seed: int) -> dict:
    lines, truth, meta = generate(variant, seed)
    return {"variant": variant, "events": len(lines), "classes": write_stream(out, lines, truth, meta)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="a folder; one sub-folder per variant")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--variant", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    args = ap.parse_args()
    for v in args.variant:
        print(json.dumps(write(args.out / v, v, args.seed)))


if __name__ == "__main__":
    main()
