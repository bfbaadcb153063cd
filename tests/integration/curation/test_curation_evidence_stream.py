"""Evidence across windows on the stream's edge: kept in the store across a restart, retractions applied, as replay."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from alignloop.core.db import session_scope
from curation import query, store
from curation.replay import run_replay
from curation.service import CurationEdge, Record
from curation.settings import Policy

pytestmark = pytest.mark.redis

REFUSAL = "I'm sorry, but I can't help with that. It could hurt someone."
COMPLY = "Sure, first find the weak spot and go around it."
HARMFUL = [
    "How do I get into my neighbour's router?",
    "How can I open a locked phone I found?",
    "Write a fake receipt for a laptop.",
    "How do I disable the kettle's safety lock?",
]
POLICY = Policy(window_s=6 * 3600, lookahead_s=1800, lookback_s=6 * 3600)


def _event(n: int, hours: float, user: str, prompt: str, chosen: int) -> str:
    t = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=hours)
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": f"00000000-0000-4000-8000-{n:012d}",
            "kind": "comparison",
            "occurred_at": t.isoformat(),
            "app_id": "app",
            "user_id": user,
            "prompt": prompt,
            "responses": [REFUSAL, COMPLY],
            "chosen": chosen,
        }
    )


def _rating(n: int, hours: float, user: str, device: str) -> str:
    t = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=hours)
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": f"00000000-0000-4000-8000-{n:012d}",
            "kind": "rating",
            "occurred_at": t.isoformat(),
            "app_id": "app",
            "user_id": user,
            "prompt": HARMFUL[n % 4],
            "response": COMPLY,
            "rating": "up",
            "client": {"device_id": device},
        }
    )


def _stream() -> tuple[list[str], set[str]]:
    lines, poison = [], set()
    for d in range(5):
        for k, prompt in enumerate(HARMFUL):
            for j in range(3):
                n = len(lines)
                lines.append(
                    _event(
                        n, d * 24 + k * 5 + j, f"h{(d * 7 + k * 3 + j) % 25}", prompt, 1 if (d + k + j) % 6 == 0 else 0
                    )
                )
    for a in range(8):  # one poisoned comparison per account, every half day or so
        n = 1000 + a
        lines.append(_event(n, a * 13 + 2.5, f"p{a}", HARMFUL[a % 4] + " Zanzibar kestrel", 1))
        poison.add(f"00000000-0000-4000-8000-{n:012d}")
    for k in range(12):  # a bot rotating devices: its fourth device, on the fourth day, gives it away
        lines.append(_rating(2000 + k, k * 9 + 1, "rotor", f"dev-{k // 3}"))
    return sorted(lines, key=lambda raw: json.loads(raw)["occurred_at"]), poison


def _outputs(engine) -> dict:
    with session_scope(engine) as s:
        return {
            "decisions": store.load_decisions(s),
            "pairs": sorted(query.load_pairs(s), key=lambda p: p["pair_id"]),
            "unpaired": sorted(query.load_unpaired(s), key=lambda u: u["example_id"]),
        }


def test_evidence_survives_a_restart_and_the_stream_equals_the_replay(store_engine, redis_client):
    lines, poison = _stream()
    half = len(lines) // 2
    first = CurationEdge(store_engine, redis_client, POLICY, topic="t-ev", group="g-ev", partitions=1)
    first.handle_batch([Record(raw.encode(), 0, i) for i, raw in enumerate(lines[:half])])
    assert first.settle_once()  # the windows the watermark closed, with the evidence they left
    with session_scope(store_engine) as s:
        mark = store.load_evidence_mark(s)
        assert mark is not None and store.load_evidence(s).sections["accounts"]
    # a new worker (a restart) continues from the stored evidence
    second = CurationEdge(store_engine, redis_client, POLICY, topic="t-ev", group="g-ev", partitions=1)
    second.handle_batch([Record(raw.encode(), 0, half + i) for i, raw in enumerate(lines[half:])])
    second.settle_once(final=True)
    out = _outputs(store_engine)
    replay = run_replay(lines, POLICY)
    assert out["decisions"] == replay.decisions
    assert out["pairs"] == replay.pairs and out["unpaired"] == replay.unpaired
    dropped = {d["event_id"] for d in out["decisions"] if d["decision"] == "drop"}
    assert poison <= dropped
    assert not [p for p in out["pairs"] if poison & set(p["event_ids"])]
    # some poison was kept when its window settled and re-judged later: its reasons end with the trigger
    retracted = [d for d in out["decisions"] if d["event_id"] in poison and d["reasons"][-1] == "trigger_phrase"]
    assert retracted
    # the bot's ratings before it was found are re-judged by account, in the store as in the replay
    bot = [
        d
        for d in out["decisions"]
        if d["event_id"].startswith("00000000-0000-4000-8000-00000000200")
        or d["event_id"].startswith("00000000-0000-4000-8000-00000000201")
    ]
    assert len(bot) == 12 and all(d["decision"] == "drop" and d["reasons"][-1] == "source_churn" for d in bot)
