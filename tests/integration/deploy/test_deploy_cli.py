"""`alignloop deploy ...` against a real SQLite registry and Redis: JSON output, audit, one-line errors."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.cli import app
from support.models import write_fake_artifact

pytestmark = [pytest.mark.redis]


@pytest.fixture
def cli_env(tmp_path, redis_url, monkeypatch):
    from alignloop.core.settings import get_settings as core_settings
    from deploy.settings import get_settings

    env = {
        "ALIGNLOOP_DEPLOY_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "ALIGNLOOP_DEPLOY_ARTIFACT_ROOT": str(tmp_path / "root"),
        "ALIGNLOOP_DEPLOY_REDIS_URL": redis_url,
        "ALIGNLOOP_DEPLOY_CONTROL_CHANNEL": f"test:cli:{tmp_path.name}",
        "ALIGNLOOP_HOME": str(tmp_path / "home"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    core_settings.cache_clear()
    for i in (1, 2):
        write_fake_artifact(tmp_path / "src" / f"v{i}", f"v{i}", seed=i)
    yield env
    get_settings.cache_clear()
    core_settings.cache_clear()


def run(*args: str) -> dict | list | str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    try:
        return json.loads(result.stdout)
    except ValueError:
        return result.stdout


def test_register_canary_promote_rollback_and_audit(cli_env, tmp_path, redis_client):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(cli_env["ALIGNLOOP_DEPLOY_CONTROL_CHANNEL"])
    for v in ("v1", "v2"):
        out = run("register", str(tmp_path / "src" / v), "--reason", "trained", "--json")
        assert out["version"] == v and out["status"] == "candidate"
    assert run("promote", "v1", "--reason", "first", "--json")["active"] == "v1"
    routing = run("canary", "v2", "--share", "0.2", "--reason", "try it", "--json")
    assert (routing["canary"], routing["canary_share"]) == ("v2", 0.2)
    assert run("promote", "--reason", "canary held", "--json")["active"] == "v2"
    assert run("rollback", "--reason", "bad numbers", "--json")["active"] == "v1"
    assert run("rollback", "--to", "v2", "--reason", "it was fine", "--json")["active"] == "v2"
    listed = run("list", "--json")
    assert {v["version"]: v["status"] for v in listed["versions"]} == {"v1": "rolled_back", "v2": "active"}
    assert listed["routing"][0]["generation"] == 5
    audit = run("audit", "--json")
    assert [e["action"] for e in audit] == [
        "register",
        "register",
        "promote",
        "canary",
        "promote",
        "rollback",
        "rollback",
    ]
    assert {e["actor"] for e in audit} == {getpass.getuser()} and audit[-2]["reason"] == "bad numbers"
    messages = []
    while (m := pubsub.get_message(timeout=1)) is not None:
        if m["type"] == "message":
            messages.append(json.loads(m["data"]))
    assert [m["generation"] for m in messages] == [1, 2, 3, 4, 5]
    assert "v2" in run("list") and "active v2" in run("list")
    shown = json.loads(CliRunner().invoke(app, ["show", "v1", "--json"]).stdout)
    assert shown["lineage"]["event_ids"] and shown["manifest"]["dataset"]["event_ids_file"] == "event_ids.txt"


def test_errors_are_one_line_and_exit_2_through_the_real_entry_point(cli_env, tmp_path):
    exe = shutil.which("alignloop") or str(Path(sys.executable).parent / "alignloop")
    bad = tmp_path / "src" / "v1"
    (bad / "adapter_model.safetensors").write_bytes(b"tampered")
    for args, message in [
        (["register", str(bad), "--reason", "x"], "sha256 mismatch for 'adapter_model.safetensors'"),
        (["promote", "nope", "--reason", "x"], "adapter version 'nope' is not registered"),
        (["rollback", "--reason", "x"], "nothing is deployed yet"),
        (["canary", "v2", "--share", "2", "--reason", "x"], "`share` must be in (0, 1]; got 2.0"),
    ]:
        p = subprocess.run([exe, "deploy", *args], capture_output=True, text=True, env=os.environ, timeout=60)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        # one message, no traceback; the core CLI's rich console wraps long lines at the terminal width
        flat = " ".join(p.stderr.split())
        assert flat.startswith("error: ") and message in flat and "Traceback" not in p.stderr, p.stderr


def test_reason_is_required(cli_env):
    result = CliRunner().invoke(app, ["promote", "v1"])
    assert result.exit_code == 2 and "--reason" in result.output


def test_moves_record_the_os_user_and_take_no_actor(cli_env, tmp_path):
    result = CliRunner().invoke(app, ["register", str(tmp_path / "src" / "v1"), "--reason", "x", "--actor", "ci"])
    assert result.exit_code == 2 and "--actor" in result.output  # who moves is the login, not an argument


def test_rollback_to_base_works_with_the_adapters_damaged(cli_env, tmp_path):
    import shutil

    for v in ("v1", "v2"):
        run("register", str(tmp_path / "src" / v), "--reason", "trained")
    run("promote", "v1", "--reason", "first")
    run("promote", "v2", "--reason", "second")
    root = Path(cli_env["ALIGNLOOP_DEPLOY_ARTIFACT_ROOT"])
    (root / "v1" / "adapter_model.safetensors").write_bytes(b"damaged")
    shutil.rmtree(root / "v2")
    plain = CliRunner().invoke(app, ["rollback", "--reason", "v2 is bad"])
    assert plain.exit_code != 0  # back to v1 needs v1's files, which fail their check
    out = run("rollback", "--to", "base", "--reason", "page: bad answers", "--json")
    assert (out["active"], out["canary"]) == (None, None)
    last = run("audit", "--json")[-1]
    assert (last["action"], last["actor"], last["version"], last["from_version"]) == (
        "rollback",
        getpass.getuser(),
        None,
        "v2",
    )


def test_admin_tokens_are_named_shown_once_and_stored_hashed(cli_env, tmp_path):
    from sqlalchemy import create_engine, text

    a = run("tokens", "create", "alice", "--json")
    b = run("tokens", "create", "deploy-bot", "--json")
    assert a["token"].startswith(f"ada_{a['token_id']}_") and a["name"] == "alice" and b["name"] == "deploy-bot"
    listed = run("tokens", "list", "--json")
    assert [(t["name"], t["revoked_at"]) for t in listed] == [("alice", None), ("deploy-bot", None)]
    assert "token" not in listed[0] and a["token"] not in json.dumps(listed)
    engine = create_engine(cli_env["ALIGNLOOP_DEPLOY_STORE_URL"])
    with engine.connect() as conn:
        stored = " ".join(str(tuple(r)) for r in conn.execute(text("SELECT * FROM deploy_admin_tokens")))
    engine.dispose()
    assert a["token"] not in stored and b["token"] not in stored
    assert run("tokens", "revoke", "alice", "--json")[0]["revoked_at"]
    assert [t["name"] for t in run("tokens", "list", "--json") if t["revoked_at"] is None] == ["deploy-bot"]
    actions = [(e["action"], e["actor"]) for e in run("audit", "--json")]
    assert actions == [("admin_token_create", getpass.getuser())] * 2 + [("admin_token_revoke", getpass.getuser())]
    bad = CliRunner().invoke(app, ["tokens", "create", "no spaces"])
    assert bad.exit_code != 0


def test_serving_keys_are_named_shown_once_stored_hashed_and_revocable(cli_env):
    from sqlalchemy import create_engine, text

    a = run("keys", "create", "shop-backend", "--json")
    b = run("keys", "create", "batch-job", "--rate", "2", "--burst", "4", "--json")
    assert a["key"].startswith(f"ask_{a['key_id']}_") and (a["rate_per_s"], a["burst"]) == (None, None)
    assert (b["name"], b["rate_per_s"], b["burst"]) == ("batch-job", 2.0, 4)
    listed = run("keys", "list", "--json")
    assert [k["name"] for k in listed] == ["shop-backend", "batch-job"] and a["key"] not in json.dumps(listed)
    assert "2/s" in run("keys", "list")
    engine = create_engine(cli_env["ALIGNLOOP_DEPLOY_STORE_URL"])
    with engine.connect() as conn:
        stored = " ".join(str(tuple(r)) for r in conn.execute(text("SELECT * FROM deploy_serving_keys")))
    engine.dispose()
    assert a["key"] not in stored and b["key"] not in stored
    assert run("keys", "revoke", b["key_id"], "--json")[0]["revoked_at"]
    assert [k["name"] for k in run("keys", "list", "--json") if k["revoked_at"] is None] == ["shop-backend"]
    assert [e["action"] for e in run("audit", "--json")] == ["serving_key_create"] * 2 + ["serving_key_revoke"]
    bad = CliRunner().invoke(app, ["keys", "create", "x", "--rate", "0"])
    assert bad.exit_code != 0
