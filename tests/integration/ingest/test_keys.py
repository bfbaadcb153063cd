"""API keys in the store (SQLite and PostgreSQL): created hashed, listed without secrets, revoked; and the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alignloop.core.db import session_scope
from ingest.errors import KeyStoreError
from ingest.store import create_key, digest, find_app_for_key, list_keys, revoke_key


def test_keys_are_stored_hashed_and_checked(store_engine):
    from sqlalchemy import text

    with session_scope(store_engine) as s:
        record, key = create_key(s, "shop-bot", "web app")
    assert key.startswith(f"alk_{record.key_id}_")
    with session_scope(store_engine) as s:
        stored = s.execute(text("SELECT key_sha256 FROM ingest_api_keys")).scalars().all()
        assert stored == [digest(key)] and key not in json.dumps(stored)
        assert find_app_for_key(s, key) == "shop-bot"
        assert find_app_for_key(s, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert find_app_for_key(s, "nonsense") is None


def test_revoked_keys_stop_working_and_stay_listed(store_engine):
    with session_scope(store_engine) as s:
        a, key_a = create_key(s, "shop-bot")
        create_key(s, "other-app")
    with session_scope(store_engine) as s:
        first = revoke_key(s, a.key_id)
        again = revoke_key(s, a.key_id)
        assert first.revoked_at == again.revoked_at and not again.active
        assert find_app_for_key(s, key_a) is None
        assert [k.app_id for k in list_keys(s)] == ["shop-bot", "other-app"]
        assert [k.app_id for k in list_keys(s, include_revoked=False)] == ["other-app"]
        assert [k.key_id for k in list_keys(s, "shop-bot")] == [a.key_id]


def test_bad_input_names_the_field(store_engine):
    with session_scope(store_engine) as s:
        with pytest.raises(KeyStoreError, match="app_id"):
            create_key(s, "Shop Bot")
        with pytest.raises(KeyStoreError, match="key_id"):
            revoke_key(s, "nope")


def test_cli_keys_create_list_revoke(tmp_path):
    from ingest.cli import app

    url = f"sqlite:///{tmp_path / 'store.db'}"
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "shop-bot", "--note", "ci", "--store-url", url, "--json"])
    assert made.exit_code == 0, made.output
    created = json.loads(made.output)
    listed = runner.invoke(app, ["keys", "list", "--store-url", url, "--json"])
    assert [k["key_id"] for k in json.loads(listed.output)] == [created["key_id"]]
    assert created["key"] not in listed.output
    revoked = runner.invoke(app, ["keys", "revoke", created["key_id"], "--store-url", url, "--json"])
    assert json.loads(revoked.output)["revoked_at"]
    bad = runner.invoke(app, ["keys", "revoke", "nope", "--store-url", url])
    assert isinstance(bad.exception, KeyStoreError)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    alignloop = Path(sys.executable).parent / "alignloop"
    done = subprocess.run(
        [str(alignloop), "ingest", "keys", "create", "Not An App", "--store-url", f"sqlite:///{tmp_path / 'store.db'}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "app_id" in done.stderr and "Traceback" not in done.stderr
