"""Canary-watch counts only feedback bound to the answer by serving's token: SDK -> Kafka -> curation workers -> store
-> canary-watch on a real registry. Forged, expired, mismatched, foreign and missing tokens never move the canary."""

from __future__ import annotations

import base64
import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.redis]

BASE = "tiny-base"  # the fake artifacts' base model; nothing is served, serving's signing is tested in deploy


@pytest.fixture
def token_env(loop_env, monkeypatch):
    from support.settings import clear_settings_caches

    monkeypatch.setenv("ALIGNLOOP_FEEDBACK_TOKEN_KEY", uuid.uuid4().hex)
    monkeypatch.setenv("ALIGNLOOP_FEEDBACK_TOKEN_MAX_AGE_S", "3600")
    clear_settings_caches()
    yield loop_env
    clear_settings_caches()


def _forge(token: str, **changes) -> str:
    """The payload rewritten (e.g. to name the canary) under the original MAC."""
    prefix, payload, mac = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).rstrip(b"=")
    return f"{prefix}.{new.decode()}.{mac}"


def test_only_verified_feedback_since_the_canary_started_decides_it(
    prefect_harness, token_env, tmp_path, kafka_bootstrap, kafka_group, redis_url, curation_topic
):
    from alignloop.core.db import session_scope
    from alignloop.core.feedback_token import sign_feedback_token
    from alignloop.core.settings import get_settings as core_settings
    from curation import query
    from curation.store import DecisionRow
    from deploy import registry
    from flows.canary import ArmStats, decide_canary
    from flows.loop import canary_watch_flow, load_canary_policy
    from ingest.client import FeedbackClient
    from retrain.corpus import PROMPTS, make_answer
    from support.models import write_fake_artifact
    from support.stream.harness import Workers

    engine = token_env["engine"]
    with session_scope(engine) as s:
        for i in (1, 2, 3):
            registry.register_adapter(
                s,
                write_fake_artifact(tmp_path / "src" / f"v{i}", f"v{i}", base_model=BASE, seed=i),
                actor="test",
                reason="test",
            )
        registry.promote(s, "v1", actor="test", reason="active arm")
    with session_scope(engine) as s:
        registry.start_canary(s, "v2", 0.5, actor="test", reason="canary under test")
    with session_scope(engine) as s:
        started = registry.canary_started_at(s, BASE)
    assert started is not None

    key = core_settings().resolved_feedback_token_key()
    rng = random.Random(7)
    now = datetime.now(UTC)
    served = now + timedelta(seconds=2)  # answers served after the canary started (tokens have whole seconds)
    t = now - timedelta(minutes=40)
    events: list[tuple[str, dict]] = []  # (role in this test, event)

    def answer(version: str | None, *, base: str = BASE, at: datetime = served) -> tuple[str, str]:
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        return rid, sign_feedback_token(key, response_id=rid, base_model=base, adapter_version=version, issued_at=at)

    def rate(
        role: str,
        user: str,
        rating: str,
        *,
        claimed: str | None,
        rid: str | None = None,
        token: str | None = None,
        when: datetime | None = None,
    ) -> dict:
        nonlocal t
        t += timedelta(seconds=rng.uniform(4, 9))
        prompt = rng.choice(PROMPTS)
        e = {
            "user_id": user,
            "prompt": prompt,
            "response": make_answer(prompt, rng.choice(["curt", "courteous"]), rng),
            "rating": rating,
            "event_id": str(uuid.uuid4()),
            "occurred_at": (when or t).isoformat(),
            "response_id": rid or f"chatcmpl-{uuid.uuid4().hex}",
            "adapter_version": claimed,
            "session_id": f"s-{user}",
        }
        if token is not None:
            e["feedback_token"] = token
        events.append((role, e))
        return e

    honest = [f"u-{i:03d}" for i in range(60)]
    canary_answers = []
    for i in range(90):  # honest users on both arms, interleaved: the canary is liked much less
        if i % 2 == 0:
            rid, tok = answer("v2")
            canary_answers.append((rid, tok))
            rate("canary", rng.choice(honest), "up" if rng.random() < 0.3 else "down", claimed="v2", rid=rid, token=tok)
        else:
            rid, tok = answer("v1")
            rate("active", rng.choice(honest), "up" if rng.random() < 0.8 else "down", claimed="v1", rid=rid, token=tok)
        if i % 3 == 0:  # 30 accounts name the canary in adapter_version and like it, without a token
            rate("no_token", f"acct-{i // 3:02d}", "up", claimed="v2")
    for _ in range(8):  # the active arm's answers from before the canary: not the same period
        rid, tok = answer("v1", at=started - timedelta(hours=1))
        rate("before_canary", rng.choice(honest), "down", claimed="v1", rid=rid, token=tok)
    for i in range(5):
        rid, tok = answer("v1")
        rate("forged", f"forger-{i}", "up", claimed="v2", rid=rid, token=_forge(tok, v="v2"))
        rid, tok = answer("v2")
        rate("expired", f"late-{i}", "up", claimed="v2", rid=rid, token=tok, when=served - timedelta(hours=2))
        _, tok = answer("v2")
        rate("mismatch", f"copier-{i}", "up", claimed="v2", token=tok)  # a valid token for another response
        rid, tok = answer("v3")
        rate("other_version", f"other-{i}", "up", claimed="v2", rid=rid, token=tok)
        rid, tok = answer("v2", base="another-base")
        rate("other_base", f"elsewhere-{i}", "up", claimed="v2", rid=rid, token=tok)
        rate("garbage", f"junk-{i}", "up", claimed="v2", token=f"alf1.not-a-token-{i}")
    rid, tok = canary_answers[0]
    for i in range(10):  # one canary answer's token copied onto many events: still one vote (the first)
        rate("replayed", f"replayer-{i}", "up", claimed="v2", rid=rid, token=tok)

    with FeedbackClient("flows-test", kafka_bootstrap, topic=curation_topic) as client:
        for _, e in events:
            fields = {k: e.pop(k) for k in ("user_id", "prompt", "response", "rating")}
            client.rate(**fields, **e)
            e.update(fields)
    workers = Workers(
        token_env["tmp"], topic=curation_topic, group=kafka_group, redis_url=redis_url, bootstrap=kafka_bootstrap
    )
    try:
        workers.start()
        workers.wait_for(lambda c: c["decisions"] >= len(events), 240, f"{len(events)} decisions")
    finally:
        workers.stop_all()

    with session_scope(engine) as s:
        rows = {r.event_id: r for r in s.query(DecisionRow)}
    by_role: dict[str, list] = {}
    for role, e in events:
        by_role.setdefault(role, []).append(rows[e["event_id"]])
    status = {role: {r.token_status for r in rs} for role, rs in by_role.items()}
    assert status == {
        "canary": {"verified"},
        "active": {"verified"},
        "before_canary": {"verified"},
        "no_token": {None},
        "forged": {"token_invalid"},
        "garbage": {"token_invalid"},
        "expired": {"token_expired"},
        "mismatch": {"token_mismatch"},
        "other_version": {"verified"},
        "other_base": {"verified"},
        "replayed": {"verified"},
    }, status
    assert {r.verified_version for r in by_role["other_version"]} == {"v3"}
    from collections import Counter

    from curation.report import build_report

    with session_scope(engine) as s:
        assert build_report(s)["tokens"] == dict(Counter(r.token_status or "none" for r in rows.values()))
    # the token never drops an event: the 30 accounts' feedback trains like any other the guards keep
    kept_no_token = [r for r in by_role["no_token"] if r.decision != "drop"]
    assert len(kept_no_token) >= 25, [r.reasons for r in by_role["no_token"]]
    assert all(r.decision != "drop" for r in by_role["expired"] + by_role["forged"]), [
        r.reasons for r in by_role["expired"] + by_role["forged"]
    ]

    def honest_counts(role: str) -> dict:
        kept = [r for r in by_role[role] if r.decision != "drop"]
        up = sum(r.rating == "up" for r in kept)
        return {
            "ratings": len(kept),
            "up": up,
            "down": len(kept) - up,
            "edits": 0,
            "comparisons": 0,
            "events": len(kept),
        }

    want_canary, want_active = honest_counts("canary"), honest_counts("active")
    assert want_canary["events"] >= 35 and want_active["events"] >= 35  # enough for a verdict either way
    with session_scope(engine) as s:
        claimed = query.load_feedback_stats(s, adapter_versions=["v2"])["v2"]
    assert claimed["up"] >= want_canary["up"] + 25  # counted by the client's word, the attack would be there

    out = canary_watch_flow(base_model=BASE, store_url=token_env["store_url"], redis_url=redis_url)
    assert out["stats"] == {"v2": want_canary, "v1": want_active}, out
    expected = decide_canary(
        ArmStats.from_feedback(want_canary), ArmStats.from_feedback(want_active), load_canary_policy()
    )
    assert out["verdict"] == expected.verdict.value == "rollback", out
    assert datetime.fromisoformat(out["since"]) == started
    with session_scope(engine) as s:
        routing = registry.get_routing(s, BASE)
        assert routing.canary is None and routing.active == "v1"
        assert registry.get_version(s, "v2").status == "rolled_back"
