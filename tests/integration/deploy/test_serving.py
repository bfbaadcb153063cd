"""One replica in process (FastAPI TestClient, real Redis control channel, SQLite registry, tiny model)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from deploy import registry
from deploy.routing import choose_version
from deploy.serving import create_app
from support.models import PROMPT, wait_for

pytestmark = [pytest.mark.redis]


def chat(client, user=None, **kw):
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": 12, "temperature": 0, "user": user, **kw}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def serving(client):
    return client.get("/healthz").json()["serving"]


@pytest.fixture
def client(deploy_env):
    """A caller with its serving key, a generous rate and the whole queue (these tests are about answers; one of
    them queues 40 requests at once)."""
    key = deploy_env.serving_key("tests", rate_per_s=1000, burst=1000)
    settings = deploy_env.settings.model_copy(update={"max_queue_per_key": deploy_env.settings.max_queue})
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def test_answers_on_the_base_model_until_something_is_active(client, reference_texts):
    out = chat(client)
    assert out["adapter_version"] is None
    assert out["response_id"] == out["id"] and out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": reference_texts[None]}
    assert out["usage"]["completion_tokens"] == 12
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["serving"]["active"] is None
    assert health["control_channel_subscribed"] is True


def test_promote_flips_to_the_new_weights_and_rollback_flips_back(client, deploy_env, reference_texts):
    deploy_env.register("v1", "v2")
    deploy_env.move(registry.promote, "v1")
    wait_for(lambda: serving(client)["active"] == "v1")
    out = chat(client)
    assert (out["adapter_version"], out["choices"][0]["message"]["content"]) == ("v1", reference_texts["v1"])
    deploy_env.move(registry.promote, "v2")
    wait_for(lambda: serving(client)["active"] == "v2")
    assert chat(client)["choices"][0]["message"]["content"] == reference_texts["v2"]
    deploy_env.move(registry.rollback)
    wait_for(lambda: serving(client)["active"] == "v1")
    out = chat(client)
    assert (out["adapter_version"], out["choices"][0]["message"]["content"]) == ("v1", reference_texts["v1"])
    metrics = client.get("/metrics").text
    assert "alignloop_deploy_swaps_total 4.0" in metrics  # start-up + promote, promote, rollback
    assert 'alignloop_deploy_requests_total{adapter_version="v1",outcome="ok"} 2.0' in metrics


def test_canary_is_sticky_per_user_and_near_its_share(client, deploy_env, reference_texts):
    deploy_env.register("v1", "v2")
    deploy_env.move(registry.promote, "v1")
    routing = deploy_env.move(registry.start_canary, "v2", 0.5)
    wait_for(lambda: serving(client)["canary"] == "v2")
    users = [f"user-{i}" for i in range(24)]
    first = {u: chat(client, user=u)["adapter_version"] for u in users}
    assert first == {u: choose_version(routing, u) for u in users}
    assert set(first.values()) == {"v1", "v2"}
    assert {u: chat(client, user=u)["adapter_version"] for u in users[:8]} == {u: first[u] for u in users[:8]}
    out = chat(client, user=next(u for u in users if first[u] == "v2"))
    assert out["choices"][0]["message"]["content"] == reference_texts["v2"]


def test_every_answer_carries_a_token_signed_over_the_version_that_answered(client, deploy_env, reference_texts):
    from datetime import UTC, datetime, timedelta

    from alignloop.core.feedback_token import VerifiedToken, verify_feedback_token
    from alignloop.core.settings import get_settings as core_settings

    key = core_settings().resolved_feedback_token_key()
    base = chat(client)
    got = verify_feedback_token(key, base["feedback_token"], now=datetime.now(UTC), max_age=timedelta(minutes=5))
    assert isinstance(got, VerifiedToken), got
    assert (got.response_id, got.base_model, got.adapter_version) == (
        base["response_id"],
        deploy_env.settings.base_model,
        None,
    )
    deploy_env.register("v1", "v2")
    deploy_env.move(registry.promote, "v1")
    deploy_env.move(registry.start_canary, "v2", 0.5)
    wait_for(lambda: serving(client)["canary"] == "v2")
    answers = [chat(client, user=f"user-{i}") for i in range(12)]
    signed = [
        verify_feedback_token(key, a["feedback_token"], now=datetime.now(UTC), max_age=timedelta(minutes=5))
        for a in answers
    ]
    assert [(t.response_id, t.adapter_version) for t in signed] == [
        (a["response_id"], a["adapter_version"]) for a in answers
    ]
    assert {t.adapter_version for t in signed} == {"v1", "v2"}
    assert len({a["feedback_token"] for a in answers}) == len(answers)


def test_a_tampered_adapter_is_refused_and_serving_stays_on_its_version(client, deploy_env, reference_texts):
    deploy_env.register("v1", "v2")
    deploy_env.move(registry.promote, "v1")
    wait_for(lambda: serving(client)["active"] == "v1")
    # the pointer moves to a good v2, then v2's bytes change before this replica loads them
    deploy_env.move(registry.promote, "v2", publish=False)
    original = deploy_env.tamper("v2")
    deploy_env.publish()
    health = wait_for(lambda: (h := client.get("/healthz").json())["last_error"] and h)
    assert "refused adapter 'v2'" in health["last_error"]
    assert "sha256 mismatch for 'adapter_model.safetensors'" in health["last_error"]
    assert health["status"] == "stale" and health["serving"]["active"] == "v1"
    assert "v2" not in health["resident"]
    out = chat(client)
    assert (out["adapter_version"], out["choices"][0]["message"]["content"]) == ("v1", reference_texts["v1"])
    assert "alignloop_deploy_load_failures_total 1.0" in client.get("/metrics").text
    deploy_env.restore("v2", original)
    deploy_env.publish()
    wait_for(lambda: serving(client)["active"] == "v2")
    assert client.get("/healthz").json()["last_error"] is None


def test_the_newest_candidate_is_staged_so_its_move_only_flips(deploy_env, reference_texts):
    """A registered candidate is verified and loaded while it waits (not routed); its canary then only flips. A
    newer candidate takes a free slot only, a rejected one gives its slot back, tampered bytes never load."""
    from alignloop.core.db import session_scope

    key = deploy_env.serving_key("tests", rate_per_s=1000, burst=1000)
    settings = deploy_env.settings.model_copy(update={"stage_candidates": True, "reconcile_interval_s": 0.2})
    deploy_env.register("v1")
    deploy_env.move(registry.promote, "v1")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        health = lambda: client.get("/healthz").json()  # noqa: E731
        wait_for(lambda: serving(client)["active"] == "v1")
        deploy_env.register("v2")
        h = wait_for(lambda: (h := health())["staged"] and h)
        assert h["staged"]["version"] == "v2" and h["resident"] == ["v1", "v2"], h
        assert (h["serving"]["active"], h["serving"]["canary"]) == ("v1", None)
        assert chat(client, user="u")["adapter_version"] == "v1"  # staged is not routed
        routing = deploy_env.move(registry.start_canary, "v2", 0.5)
        wait_for(lambda: serving(client)["canary"] == "v2")
        swap = health()["last_swap"]
        assert swap["generation"] == routing.generation and not any(k.startswith("install_v2") for k in swap), swap
        user = next(f"user-{i}" for i in range(100) if choose_version(routing, f"user-{i}") == "v2")
        assert chat(client, user=user)["choices"][0]["message"]["content"] == reference_texts["v2"]

        deploy_env.register("v3")  # the one free slot of three
        wait_for(lambda: health()["resident"] == ["v1", "v2", "v3"])
        with session_scope(deploy_env.engine) as s:
            registry.reject_candidate(s, "v3", actor="tester", reason="gate failed")
        wait_for(lambda: health()["resident"] == ["v1", "v2"])

        with session_scope(deploy_env.engine) as s:  # tampered before any replica can see it
            registry.register_adapter(
                s, deploy_env.sources["v4"], actor="tester", reason="t", storage=deploy_env.storage
            )
            deploy_env.tamper("v4")
        h = wait_for(lambda: (h := health())["staged"] and h["staged"]["version"] == "v4" and h)
        assert "sha256 mismatch" in h["staged"]["error"] and h["resident"] == ["v1", "v2"], h
        assert chat(client, user=user)["adapter_version"] == "v2"


def test_a_full_replica_stages_in_place_of_what_no_move_or_rollback_needs(deploy_env, reference_texts):
    """With every slot taken, the candidate is staged in place of the least recently used version that nothing
    routes to and a plain rollback does not return to; its promote then only flips, and the rollback too."""
    key = deploy_env.serving_key("tests", rate_per_s=1000, burst=1000)
    settings = deploy_env.settings.model_copy(update={"stage_candidates": True, "reconcile_interval_s": 0.2})
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        health = lambda: client.get("/healthz").json()  # noqa: E731
        for v in ("v1", "v2", "v3"):
            deploy_env.register(v)
            deploy_env.move(registry.promote, v)
            wait_for(lambda v=v: serving(client)["active"] == v)
        wait_for(lambda: health()["resident"] == ["v1", "v2", "v3"])  # max_resident=3: full
        deploy_env.register("v4")
        h = wait_for(lambda: (h := health())["staged"] and h["staged"]["version"] == "v4" and h)
        assert h["resident"] == ["v2", "v3", "v4"], h  # v1 gave its slot; v2 is what a rollback returns to
        assert h["staged"]["mode"] == "hotswap into v1's slot" and h["serving"]["active"] == "v3", h
        routing = deploy_env.move(registry.promote, "v4")
        wait_for(lambda: serving(client)["active"] == "v4")
        swap = health()["last_swap"]
        assert swap["generation"] == routing.generation and not any(k.startswith("install_") for k in swap), swap
        assert chat(client)["choices"][0]["message"]["content"] == reference_texts["v4"]
        deploy_env.move(registry.rollback)
        wait_for(lambda: serving(client)["active"] == "v3")
        assert not any(k.startswith("install_") for k in health()["last_swap"])
        assert chat(client)["choices"][0]["message"]["content"] == reference_texts["v3"]


def test_old_adapters_are_unloaded_least_recently_used_first(client, deploy_env, reference_texts):
    deploy_env.register("v1", "v2", "v3", "v4", "v5")
    for v in ("v1", "v2", "v3", "v4", "v5"):
        deploy_env.move(registry.promote, v)
        wait_for(lambda v=v: serving(client)["active"] == v)
    wait_for(lambda: client.get("/healthz").json()["resident"] == ["v3", "v4", "v5"])  # max_resident=3
    # a full host loads the new version into the least recently used slot, in place
    assert client.get("/healthz").json()["last_swap"]["install_v5_mode"] == "hotswap into v2's slot"
    deploy_env.move(registry.rollback, to="v1")  # an unloaded version loads again, verified again
    wait_for(lambda: serving(client)["active"] == "v1")
    assert chat(client)["choices"][0]["message"]["content"] == reference_texts["v1"]


def test_admin_api_takes_named_tokens_and_audits_the_tokens_name(client, deploy_env):
    deploy_env.register("v1", "v2")
    ops = {"Authorization": f"Bearer {deploy_env.admin_token('ops')}"}
    oncall = {"Authorization": f"Bearer {deploy_env.admin_token('oncall')}"}  # several tokens, each its own name
    assert client.get("/admin/versions").status_code == 401
    assert client.get("/admin/versions", headers={"Authorization": "Bearer wrong"}).status_code == 401
    listed = client.get("/admin/versions", headers=ops).json()
    assert [v["version"] for v in listed["versions"]] == ["v1", "v2"]
    r = client.post("/admin/canary", headers=ops, json={"version": "v1", "share": 0.3, "reason": "try"})
    assert r.status_code == 200 and r.json()["routing"]["canary"] == "v1"
    r = client.post("/admin/promote", headers=ops, json={"reason": "looks good", "actor": "someone-else"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "actor"  # who acts is the token, never the body
    r = client.post("/admin/promote", headers=ops, json={"reason": "looks good"})
    assert r.json()["routing"]["active"] == "v1"
    wait_for(lambda: serving(client)["active"] == "v1")
    r = client.post("/admin/promote", headers=ops, json={"version": "nope", "reason": "x"})
    assert r.status_code == 404 and "not registered" in r.json()["error"]["message"]
    r = client.post("/admin/rollback", headers=oncall, json={"to": "v2", "reason": "x"})
    assert r.status_code == 409 and "was active before" in r.json()["error"]["message"]
    r = client.post("/admin/rollback", headers=oncall, json={"reason": "bad numbers"})
    assert r.status_code == 200 and r.json()["routing"]["active"] is None
    audit = client.get("/admin/audit", headers=oncall).json()["audit"]
    assert [(e["action"], e["actor"], e["reason"]) for e in audit][-3:] == [
        ("canary", "ops", "try"),
        ("promote", "ops", "looks good"),
        ("rollback", "oncall", "bad numbers"),
    ]
    # stored hashed: no column holds a token; a revoked one is refused (cache time 0 in these settings)
    from sqlalchemy import text

    with deploy_env.engine.connect() as conn:
        rows = [str(tuple(r)) for r in conn.execute(text("SELECT * FROM deploy_admin_tokens"))]
    assert len(rows) == 2 and not any(h["Authorization"][7:] in row for row in rows for h in (ops, oncall))
    deploy_env.revoke_admin_token("ops")
    assert client.get("/admin/versions", headers=ops).status_code == 401
    assert client.get("/admin/versions", headers=oncall).status_code == 200
    r = client.post("/admin/rollback", headers=oncall, json={"to": "base", "reason": "page"})  # as on the CLI
    assert r.status_code == 200 and r.json()["routing"]["active"] is None
    assert client.get("/admin/audit", headers=oncall).json()["audit"][-1]["detail"]["to"] == "base"


def test_admin_api_is_off_until_a_token_exists(client):
    r = client.get("/admin/versions", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 503 and "alignloop deploy tokens create" in r.json()["error"]["message"]


def test_a_replica_starting_on_a_damaged_active_adapter_serves_the_base_and_says_degraded(deploy_env, reference_texts):
    deploy_env.register("v1")
    deploy_env.move(registry.promote, "v1")
    original = deploy_env.tamper("v1")
    key = deploy_env.serving_key("tests")
    with TestClient(create_app(deploy_env.settings), headers={"Authorization": f"Bearer {key}"}) as c:
        r = c.get("/healthz")
        assert r.status_code == 200, r.text
        health = r.json()
        assert health["status"] == "degraded" and health["serving"]["active"] is None
        assert health["degraded"]["versions"] == ["v1"] and "sha256 mismatch" in health["degraded"]["error"]
        out = chat(c)
        assert (out["adapter_version"], out["choices"][0]["message"]["content"]) == (None, reference_texts[None])
        assert "alignloop_deploy_degraded 1.0" in c.get("/metrics").text
        deploy_env.restore("v1", original)
        deploy_env.publish()
        wait_for(lambda: serving(c)["active"] == "v1")
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["degraded"] is None
        assert chat(c)["adapter_version"] == "v1"
        assert "alignloop_deploy_degraded 0.0" in c.get("/metrics").text


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": PROMPT, "max_tokens": 0}, "max_tokens"),
        ({"messages": PROMPT, "temperature": 3}, "temperature"),
        ({"messages": PROMPT, "n": 2}, "n"),
        ({"messages": PROMPT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"messages": PROMPT, "logprobs": True}, "logprobs"),
        ({"messages": PROMPT, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_bad_requests_get_a_400_naming_the_field(client, body, param):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_max_tokens_above_the_limit_is_a_400(client, deploy_env):
    r = client.post("/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 100000})
    assert r.status_code == 400 and "`max_tokens` must be at most" in r.json()["error"]["message"]


def test_sampling_with_a_seed_is_repeatable(client):
    a = chat(client, temperature=0.9, seed=7)["choices"][0]["message"]["content"]
    b = chat(client, temperature=0.9, seed=7)["choices"][0]["message"]["content"]
    assert a == b


def test_requests_routed_before_a_flip_finish_on_their_adapter_even_when_it_is_unrouted(
    client, deploy_env, reference_texts
):
    import time
    from concurrent.futures import ThreadPoolExecutor

    deploy_env.register("v1", "v2", "v3", "v4", "v5")
    deploy_env.move(registry.promote, "v1")
    wait_for(lambda: serving(client)["active"] == "v1")

    def timed_chat():
        out = chat(client, seed=1)  # seeded requests run one by one (never batched), so a queue builds up
        return out, time.time()

    with ThreadPoolExecutor(40) as pool:
        queued = [pool.submit(timed_chat) for _ in range(40)]  # one model worker: most of these wait in line
        wait_for(lambda: 'adapter_version="v1",outcome="ok"' in client.get("/metrics").text, timeout=30)
        for v in ("v2", "v3", "v4", "v5"):  # adapter loads jump the queue; v1 falls out of routing and of the LRU
            deploy_env.move(registry.promote, v)
            wait_for(lambda v=v: serving(client)["active"] == v)
        last_flip = client.get("/healthz").json()["applied_at"]
        # unloading follows the flip (off the request path): wait for the bound to hold again
        resident_during = wait_for(lambda: len(r := client.get("/healthz").json()["resident"]) <= 3 and r)
        answers = [f.result() for f in queued]
    assert sum(done > last_flip for _, done in answers) > 0, "no request was still running after the last flip"
    assert all(
        (a["adapter_version"], a["choices"][0]["message"]["content"], a["routing_generation"])
        == ("v1", reference_texts["v1"], 1)
        for a, _ in answers
    )
    # v1 was held by those requests through every flip, so the LRU dropped v2 and v3 instead; memory stayed bounded
    assert resident_during == ["v1", "v4", "v5"]
    deploy_env.move(registry.rollback, to="v3")  # now nothing holds v1: the next flip unloads it
    wait_for(lambda: serving(client)["active"] == "v3")
    wait_for(lambda: client.get("/healthz").json()["resident"] == ["v3", "v4", "v5"])


# ---------------------------------------------------------------- the door: keys, rate, size, queue, time
def door_client(deploy_env, **settings):
    return TestClient(create_app(deploy_env.settings.model_copy(update=settings)))


def ask(c, key: str | None, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return c.post(
        "/v1/chat/completions", headers=headers, json={"messages": PROMPT, "max_tokens": 4, "temperature": 0, **kw}
    )


def test_chat_needs_an_active_serving_key_stored_hashed(deploy_env):
    key = deploy_env.serving_key("shop")
    with door_client(deploy_env) as c:
        r = ask(c, None)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert "alignloop deploy keys create" in r.json()["error"]["message"]
        assert ask(c, key[:-1] + ("A" if key[-1] != "A" else "B")).status_code == 401
        assert ask(c, deploy_env.admin_token("ops")).status_code == 401  # an admin token is no serving key
        assert ask(c, key).status_code == 200
        from alignloop.core.db import session_scope
        from deploy.keys import revoke_serving_key

        with session_scope(deploy_env.engine) as s:
            revoke_serving_key(s, "shop", revoked_by="tester")
        assert ask(c, key).status_code == 401  # key_cache_s=0 in these settings
        assert 'alignloop_deploy_refused_total{status="401"} 4.0' in c.get("/metrics").text
    from sqlalchemy import text

    with deploy_env.engine.connect() as conn:
        rows = " ".join(str(tuple(r)) for r in conn.execute(text("SELECT * FROM deploy_serving_keys")))
    assert "shop" in rows and key not in rows and key.split("_")[2] not in rows


def test_keys_can_be_optional_where_an_operator_says_so(deploy_env):
    with door_client(deploy_env, require_keys=False) as c:
        assert ask(c, None).status_code == 200
        assert ask(c, "ask_000000000000_" + "x" * 43).status_code == 401  # a wrong key is still wrong


def test_a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_go_on(deploy_env):
    greedy, other = deploy_env.serving_key("greedy", rate_per_s=0.5, burst=2), deploy_env.serving_key("other")
    with door_client(deploy_env) as c:
        assert [ask(c, greedy).status_code for _ in range(3)] == [200, 200, 429]
        r = ask(c, greedy)
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 2
        assert "over its rate of 0.5 requests/s" in r.json()["error"]["message"]
        assert ask(c, other).status_code == 200


def test_a_body_past_max_body_bytes_is_413_and_a_long_prompt_400_or_truncated(deploy_env):
    key = deploy_env.serving_key("shop")
    words = " ".join(["order refund please"] * 200)  # about 600 tokens: past the tiny model's 512 positions
    with door_client(deploy_env, max_body_bytes=2048) as c:  # the body is about 4 KB
        r = ask(c, key, messages=[{"role": "user", "content": words}])
        assert r.status_code == 413 and "`max_body_bytes`" in r.json()["error"]["message"]
    with door_client(deploy_env) as c:
        r = ask(c, key, messages=[{"role": "user", "content": words}])
        assert r.status_code == 400
        assert r.json()["error"]["message"].startswith("`messages` must be at most 512 tokens")
    with door_client(deploy_env, max_prompt_tokens=64, prompt_overflow="truncate") as c:
        r = ask(c, key, messages=[{"role": "user", "content": words}])
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 64


def test_a_full_queue_gets_429_and_a_slow_answer_504(deploy_env):
    from concurrent.futures import ThreadPoolExecutor

    key = deploy_env.serving_key("shop", rate_per_s=1000, burst=1000)
    for bounds, says in [
        ({"max_queue": 2, "max_queue_per_key": 8}, "queue is full (2 of `max_queue` 2"),
        ({"max_queue": 8, "max_queue_per_key": 2}, "`max_queue_per_key` is 2"),
    ]:
        # seeded requests run one by one: the first ones hold the queue
        with door_client(deploy_env, **bounds) as c, ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: ask(c, key, max_tokens=200, seed=i), range(8)))
        codes = sorted(r.status_code for r in answers)
        assert codes.count(200) >= 2 and codes.count(429) >= 1, codes
        full = next(r for r in answers if r.status_code == 429)
        assert full.headers["Retry-After"] == "1" and says in full.json()["error"]["message"]
    with door_client(deploy_env, request_timeout_s=0.01) as c:
        r = ask(c, key, max_tokens=200, seed=1)
        assert r.status_code == 504 and "`request_timeout_s`" in r.json()["error"]["message"]
