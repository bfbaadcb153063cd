"""The read API's suspected triggers: phrases curation judged triggers (and dropped), then those it suspects on
too little evidence to drop anything, from the evidence store, on SQLite and PostgreSQL."""

from __future__ import annotations

from alignloop.core.db import session_scope
from curation import query, store


def _uses(*rows: tuple[str, int, float]) -> list[list]:
    return [[user, f"ev-{user}-{i}", bad, rate] for i, (user, bad, rate) in enumerate(rows)]


def test_judged_triggers_come_first_then_the_suspected_ones_flagged_but_not_dropped(store_engine):
    phrases = {
        "zanzibar kestrel protocol": {
            "uses": _uses(("p1", 1, 0.1), ("p2", 1, 0.1), ("p3", 1, 0.1)),
            "users": ["p1", "p2", "p3"],
            "natural": 0,
        },
        # two accounts moved answers against the crowd with it: suspected, below the significance to drop
        "quokka lantern": {
            "uses": _uses(("q1", 1, 0.2), ("q2", 1, 0.2), ("h1", 0, 0.2)),
            "users": ["q1", "q2", "h1"],
            "natural": 0,
        },
        "moss harbour": {
            "uses": _uses(("m1", 1, 0.3), ("m2", 1, 0.3), ("m3", 0, 0.3), ("m4", 0, 0.3)),
            "users": ["m1", "m2", "m3", "m4"],
            "natural": 0,
        },
        "thanks a lot": {"uses": _uses(("h2", 1, 0.3), ("h3", 0, 0.3)), "users": ["h2", "h3"], "natural": 4},
    }
    rows = {("phrases", k): v for k, v in phrases.items()}
    rows[("flags", "triggers")] = {"zanzibar kestrel protocol": "trigger_phrase"}
    with session_scope(store_engine) as s:
        store.save_evidence(s, rows)
    with session_scope(store_engine) as s:
        got = query.load_suspected_triggers(s)
        assert [t.phrase for t in got] == ["zanzibar kestrel protocol", "quokka lantern", "moss harbour"]
        assert [t.dropped for t in got] == [True, False, False]
        assert got[1].bad_accounts == 2 and got[1].uses == 3 and got[1].p_value < got[2].p_value
        assert [t.phrase for t in query.load_suspected_triggers(s, min_accounts=3)] == ["zanzibar kestrel protocol"]
        assert len(query.load_suspected_triggers(s, limit=2)) == 2


def test_an_empty_store_suspects_nothing(store_engine):
    with session_scope(store_engine) as s:
        assert query.load_suspected_triggers(s) == []
