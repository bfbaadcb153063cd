"""The core: CLI faces, settings from env, store helpers on SQLite (no services)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import inspect, text

GROUPS = ["stack", "ingest", "curation", "retrain", "deploy", "flows"]


def _run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    code = (
        "import sys, runpy; sys.argv = ['alignloop', *sys.argv[1:]]\n"
        "from alignloop import cli\n"
        "try:\n    cli.main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "print('TORCH_LOADED=' + str('torch' in sys.modules), file=sys.stderr)\n"
        "sys.exit(code)"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("group", [None, *GROUPS])
def test_help_explains_and_does_not_import_torch(group):
    done = _run_cli(*([group] if group else []), "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
    assert "TORCH_LOADED=False" in done.stderr
    if group is None:
        for g in GROUPS:
            assert g in done.stdout


def test_settings_come_from_env_prefix(monkeypatch, tmp_path):
    from alignloop.core.settings import CoreSettings

    monkeypatch.setenv("ALIGNLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("ALIGNLOOP_KAFKA_BOOTSTRAP", "127.0.0.1:19999")
    s = CoreSettings()
    assert s.home == tmp_path
    assert s.kafka_port == 19999
    assert s.resolved_store_url == f"sqlite:///{tmp_path / 'alignloop.db'}"


def test_migrations_up_and_down_on_sqlite(sqlite_engine):
    from alembic.script import ScriptDirectory

    from alignloop.core.db import alembic_config, current_heads, downgrade, upgrade

    upgrade(sqlite_engine)
    assert "alignloop_meta" in inspect(sqlite_engine).get_table_names()
    script_heads = set(ScriptDirectory.from_config(alembic_config(sqlite_engine)).get_heads())
    assert current_heads(sqlite_engine) == script_heads
    downgrade(sqlite_engine, "base")
    assert inspect(sqlite_engine).get_table_names() == ["alembic_version"]
    upgrade(sqlite_engine)
    assert "alignloop_meta" in inspect(sqlite_engine).get_table_names()


def test_session_scope_rolls_back_on_error(sqlite_engine):
    from alignloop.core.db import session_scope, upgrade

    upgrade(sqlite_engine)
    with pytest.raises(RuntimeError), session_scope(sqlite_engine) as s:
        s.execute(text("INSERT INTO alignloop_meta (key, value) VALUES ('a', 'b')"))
        raise RuntimeError("boom")
    with session_scope(sqlite_engine) as s:
        assert s.execute(text("SELECT count(*) FROM alignloop_meta")).scalar() == 0


def test_bad_store_url_is_one_line_error(tmp_path):
    from alignloop.core.db import open_store
    from alignloop.core.errors import StoreError

    with pytest.raises(StoreError, match="migration"):
        open_store("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_stack_status_json_is_machine_readable(tmp_path):
    env = {
        "ALIGNLOOP_HOME": str(tmp_path),
        "ALIGNLOOP_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "ALIGNLOOP_REDIS_URL": "redis://127.0.0.1:2/0",
        "ALIGNLOOP_POSTGRES_URL": "postgresql+psycopg://x@127.0.0.1:3/x",
        "PATH": "/usr/bin:/bin",
    }
    done = _run_cli("stack", "status", "--json", env=env)
    assert done.returncode == 1  # nothing answers on those ports
    rows = json.loads(done.stdout)
    assert [r["name"] for r in rows] == ["kafka", "redis", "postgres", "engine"]
    assert not any(r["healthy"] for r in rows[:3])
    assert rows[3]["healthy"]  # the embedded engine needs no server


def test_processes_migrating_one_new_store_at_once_take_turns(tmp_path):
    """Workers and replicas that start together on a new SQLite store must not race on CREATE TABLE."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    code = "import sys; from flows.store import open_shared_store; open_shared_store(sys.argv[1]).dispose()"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = []
    for p in procs:
        _, err = p.communicate(timeout=120)  # reads stderr to its end and closes it
        results.append((p.returncode, err))
    assert all(rc == 0 for rc, _ in results), [err[-500:] for rc, err in results if rc]


def test_every_package_branch_in_the_tree_is_registered_for_the_shared_store():
    """A new package with tables must add its migrations folder to flows.store, or the shared store would miss it."""
    from pathlib import Path

    from flows.store import STAGE_MIGRATIONS

    root = Path(__file__).resolve().parents[2]
    on_disk = {p.parent.resolve() for p in root.glob("*/migrations/__init__.py")}  # alignloop's is in core/
    assert on_disk == {p.resolve() for p in STAGE_MIGRATIONS}


def _open_with_branches(url: str, packages: str) -> subprocess.CompletedProcess:
    """A fresh process that opens `url` knowing only the core and `packages`' branches (comma-separated)."""
    code = (
        "import importlib, sys\n"
        "from alignloop.core.db import open_store\n"
        "folders = [importlib.import_module(p + '.migrations').FOLDER for p in sys.argv[2].split(',') if p]\n"
        "open_store(sys.argv[1], branches=folders).dispose()"
    )
    return subprocess.run([sys.executable, "-c", code, url, packages], capture_output=True, text=True, timeout=120)


def test_a_store_gets_the_tables_of_the_branches_its_opener_registers(tmp_path):
    from alignloop.core.db import make_engine

    url = f"sqlite:///{tmp_path / 'ingest-only.db'}"
    done = _open_with_branches(url, "ingest")
    assert done.returncode == 0, done.stderr[-800:]
    engine = make_engine(url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert "alignloop_meta" in tables and "ingest_api_keys" in tables
    assert not any(t.startswith(("curation_", "deploy_")) for t in tables)


def test_a_stage_alone_opens_a_current_shared_store_and_leaves_the_other_heads_alone(tmp_path):
    """`python -m curation.worker` knows only curation's branch; the shared store also holds ingest's and deploy's."""
    from alignloop.core.db import current_heads, make_engine

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    assert _open_with_branches(url, "ingest,curation,deploy").returncode == 0
    engine = make_engine(url)
    before = current_heads(engine)
    done = _open_with_branches(url, "curation")
    assert done.returncode == 0, done.stderr[-800:]
    assert current_heads(engine) == before
    engine.dispose()


def test_a_stage_alone_that_must_migrate_beside_unknown_heads_gets_a_one_line_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'ingest-first.db'}"
    assert _open_with_branches(url, "ingest").returncode == 0
    done = _open_with_branches(url, "deploy")  # deploy's tables are missing, and ingest's head is unknown to it
    assert done.returncode != 0
    assert "StoreError" in done.stderr and "registered branches" in done.stderr
