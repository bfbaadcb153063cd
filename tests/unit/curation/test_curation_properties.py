"""Properties over arbitrary valid events (ingest's strategies): one decision each, lineage only from kept events,
no regex-detectable PII in anything built."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.items import build_item
from curation.pii import find_pii
from curation.pipeline import settle_window, window_start
from curation.settings import Policy
from support.events import events

POLICY = Policy(window_s=2 * 10**9, lookahead_s=0, lookback_s=0)  # one window holds every generated time


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), min_size=1, max_size=12, unique_by=lambda e: e.event_id))
def test_one_decision_per_event_and_lineage_from_kept_events(evs):
    items = [build_item(e, b"test-key") for e in evs]
    start = window_start(min(it.occurred_at for it in items), POLICY)
    result = settle_window(items, start, POLICY)
    assert sorted(d["event_id"] for d in result.decisions) == sorted(it.event_id for it in items)
    assert {d["decision"] for d in result.decisions} <= {"keep", "drop", "redact"}
    kept = {d["event_id"] for d in result.decisions if d["decision"] != "drop"}
    for built in result.pairs + result.unpaired:
        assert set(built.event_ids) <= kept
        assert 0 < built.weight <= 1 and built.dimension in ("safety", "helpfulness")
        j = built.to_json()
        for m in j["prompt"] + j.get("chosen", []) + j.get("rejected", []) + j.get("completion", []):
            assert not find_pii(m["content"])
