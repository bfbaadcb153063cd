"""The store on SQLite and PostgreSQL: idempotent writes, the read API other packages use, export == replay."""

from alignloop.core.db import session_scope
from curation import query, store
from curation.decode import Accepted, decode_raw
from curation.pipeline import Staging, settle_all
from curation.replay import run_replay
from curation.settings import Policy
from support.stream.generate import generate


def _settled(lines):
    staging = Staging()
    for line in lines:
        out = decode_raw(line)
        if isinstance(out, Accepted):
            staging.add(out.item)
    return staging, settle_all(staging, Policy())


def test_writes_are_idempotent_and_the_read_api_matches_the_replay(store_engine):
    lines, _, _ = generate(seed=3, scale=0.1, hours=2.0)
    staging, windows = _settled(lines)
    for _ in range(2):  # a redelivered batch and a second settle change nothing
        with session_scope(store_engine) as s:
            store.save_staged(s, [(it, f"0:{i}") for i, it in enumerate(staging.items())])
            for w in windows:
                store.save_window(s, w)
    replay = run_replay(lines, Policy())
    with session_scope(store_engine) as s:
        counts = store.count_rows(s)
        assert counts["staged"] == len(staging) and counts["pairs"] == len(replay.pairs)
        assert counts["unpaired"] == len(replay.unpaired)
        exported = {d["event_id"]: d for d in store.load_decisions(s)}
        pairs = query.load_pairs(s)
        unpaired = query.load_unpaired(s)
        assert query.count_pairs(s) == len(pairs)
        late = pairs[-1]["created_at"]
        assert query.count_pairs(s, since=late) == len(query.load_pairs(s, since=late)) >= 1
        stats = query.load_feedback_stats(s, adapter_versions=[None, "v-missing"])
    rejected = {d["event_id"] for d in replay.decisions if d["reasons"] and d["reasons"][0].startswith("contract_")}
    assert [d for d in replay.decisions if d["event_id"] not in rejected] == [exported[e] for e in sorted(exported)]
    assert sorted(pairs, key=lambda p: p["pair_id"]) == replay.pairs
    assert sorted(unpaired, key=lambda u: u["example_id"]) == replay.unpaired
    p = pairs[0]
    assert set(p) == {"prompt", "chosen", "rejected", "weight", "dimension", "event_ids", "created_at", "pair_id"}
    assert p["chosen"][0]["role"] == "assistant" and p["dimension"] in ("safety", "helpfulness")
    kept = [d for d in replay.decisions if d["decision"] != "drop"]
    assert stats[None]["events"] == len(kept) and stats["v-missing"]["events"] == 0
    assert stats[None]["ratings"] == stats[None]["up"] + stats[None]["down"]


def test_feedback_stats_count_only_kept_events_per_adapter(store_engine):
    from datetime import UTC, datetime

    from curation.pipeline import WindowResult, decision_row
    from support.items import make

    items = [
        make(user="a", rating="up", adapter="v2"),
        make(user="b", rating="down", adapter="v2"),
        make("edit", user="c", adapter="v2"),
        make(user="d", rating="up", adapter="v1"),
    ]
    rows = [decision_row(it, [], None) for it in items]
    rows.append(decision_row(make(user="e", rating="up", adapter="v2"), ["rate_user"], None))
    with session_scope(store_engine) as s:
        store.save_window(s, WindowResult(datetime(2026, 11, 1, tzinfo=UTC), rows, [], []))
    with session_scope(store_engine) as s:
        stats = query.load_feedback_stats(s, adapter_versions=["v2", "v1", None])
    assert stats["v2"] == {"ratings": 2, "up": 1, "down": 1, "edits": 1, "comparisons": 0, "events": 3}
    assert stats["v1"]["up"] == 1 and stats[None]["events"] == 0


def test_verified_stats_count_signed_versions_served_in_the_period_once_per_answer(store_engine):
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    from curation.pipeline import WindowResult, decision_row
    from curation.tokens import TokenStatus
    from support.items import make

    since = datetime(2026, 11, 2, 12, 0, 0, 500000, tzinfo=UTC)  # a canary start has microseconds; tokens not

    def signed(version, *, served_s=60, base="base", rid=None, **kw):
        item = make(adapter="claimed-by-client", **kw)
        rid = rid or f"r-{item.event_id}"
        return replace(
            item,
            token=TokenStatus(
                "verified",
                version=version,
                base_model=base,
                response_id=rid,
                served_at=since.replace(microsecond=0) + timedelta(seconds=served_s),
            ),
        )

    items = [
        signed("v2", user="a", rating="up"),
        signed("v2", user="b", rating="down"),
        signed("v2", user="c", kind="edit"),
        signed("v2", user="d", rating="up", served_s=0),  # served in the second the period began
        signed("v1", user="e", rating="up"),
        signed(None, user="f", rating="down"),
        signed("v2", user="g", rating="up", served_s=-5),  # served before the period
        signed("v2", user="h", rating="up", served_s=3600),  # served after it
        signed("v2", user="i", rating="up", base="another-base"),  # another base model's v2
        signed("v2", user="j", rating="down", rid="r-shared", t=1.0),
        signed("v2", user="k", rating="up", rid="r-shared", t=2.0),  # the same answer again: not a 2nd vote
        replace(make(user="l", rating="up", adapter="v2"), token=TokenStatus("token_invalid")),
        make(user="m", rating="up", adapter="v2"),
    ]
    rows = [decision_row(it, [], None) for it in items]
    rows.append(decision_row(signed("v2", user="n", rating="up"), ["brigade"], None))  # dropped by a guard
    with session_scope(store_engine) as s:
        store.save_window(s, WindowResult(datetime(2026, 11, 1, tzinfo=UTC), rows, [], []))
    with session_scope(store_engine) as s:
        got = query.load_verified_feedback_stats(
            s, base_model="base", adapter_versions=["v2", "v1", None], since=since, until=since + timedelta(minutes=30)
        )
        open_ended = query.load_verified_feedback_stats(s, base_model="base", adapter_versions=["v2"], since=since)
        claimed = query.load_feedback_stats(s, adapter_versions=["v2"])
    assert got["v2"] == {"ratings": 4, "up": 2, "down": 2, "edits": 1, "comparisons": 0, "events": 5}
    assert got["v1"]["up"] == 1 and got[None]["down"] == 1 and got[None]["events"] == 1
    assert open_ended["v2"]["events"] == 6  # the answer served an hour later counts without `until`
    assert claimed["v2"]["events"] == 2  # the client's word counts only where it said v2


def test_decision_counts_and_reasons_for_the_demo_and_reports(store_engine):
    from datetime import UTC, datetime

    from curation.pipeline import WindowResult, decision_row
    from support.items import make

    rows = [
        decision_row(make(user="a", rating="up"), [], None),
        decision_row(make(user="b", rating="down"), ["rate_user"], None),
        decision_row(make(user="c", rating="down"), ["rate_user", "unreliable_user"], None),
    ]
    with session_scope(store_engine) as s:
        assert query.count_decisions(s) == 0
        store.save_window(s, WindowResult(datetime(2026, 11, 1, tzinfo=UTC), rows, [], []))
    with session_scope(store_engine) as s:
        assert query.count_decisions(s) == 3
        assert query.reason_counts(s) == {"kept": 1, "rate_user": 2, "unreliable_user": 1}
        assert [d["decision"] for d in query.load_decisions(s)] == [
            r["decision"] for r in sorted(rows, key=lambda r: r["event_id"])
        ]
