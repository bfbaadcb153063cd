"""Schedules without a server: which retrain runs count as in flight, what a retrain run is given, and the
one-line errors of `flows serve` when it cannot have a Prefect server."""

from __future__ import annotations

import json
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path

import pytest

from flows.errors import FlowsError
from flows.loop import pick_in_flight
from flows.schedule import connect_prefect_server, retrain_parameters, start_prefect_server
from flows.settings import FlowsSettings

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


class _Type(Enum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"


@dataclass
class _State:
    type: _Type


@dataclass
class _Run:
    state: _State | None
    expected_start_time: datetime | None = None
    next_scheduled_start_time: datetime | None = None
    id: uuid.UUID = None

    def __post_init__(self):
        self.id = self.id or uuid.uuid4()


def run(kind: str, start: datetime | None = NOW) -> _Run:
    return _Run(_State(_Type(kind)), expected_start_time=start)


def test_a_running_pending_or_due_retrain_is_in_flight():
    for kind in ("RUNNING", "PENDING", "SCHEDULED"):
        r = run(kind, NOW - timedelta(seconds=5))
        assert pick_in_flight([r], NOW) == str(r.id)


def test_finished_runs_and_the_crons_later_runs_are_not_in_flight():
    later = run("SCHEDULED", NOW + timedelta(hours=19))  # tomorrow's 03:00 run the server scheduled ahead
    assert pick_in_flight([run("COMPLETED"), run("CANCELLED"), later, _Run(None)], NOW) is None
    due = run("SCHEDULED", NOW + timedelta(seconds=30))
    assert pick_in_flight([later, due], NOW) == str(due.id)


def test_retrain_parameters_carry_absolute_config_paths_and_the_urls_a_worker_needs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("run.yaml").write_text("version: 1\n")
    Path("gates.yaml").write_text("{}\n")
    settings = FlowsSettings(
        train_config=Path("run.yaml"), gates=Path("gates.yaml"), base_model="/models/b", canary_share=0.3
    )
    params = retrain_parameters(settings, store_url="postgresql+psycopg://h/db", redis_url="redis://h:6379/2")
    assert params == {
        "base_model": "/models/b",
        "train_config": str(tmp_path / "run.yaml"),
        "gates": str(tmp_path / "gates.yaml"),
        "canary_share": 0.3,
        "actor": "alignloop-flows",
        "store_url": "postgresql+psycopg://h/db",
        "redis_url": "redis://h:6379/2",
    }
    served = retrain_parameters(FlowsSettings())
    assert served["train_config"] is None and "store_url" not in served  # served runs inherit this process's env


def test_retrain_parameters_never_carry_a_password_and_the_run_puts_it_back(tmp_path, monkeypatch):
    from alignloop.core.settings import get_settings
    from flows.loop import _redis_url, _store_url

    params = retrain_parameters(
        FlowsSettings(),
        store_url="postgresql+psycopg://alignloop:s3cret@h:5433/db",
        redis_url="redis://:r3dis@h:6379/2",
    )
    assert (params["store_url"], params["redis_url"]) == (
        "postgresql+psycopg://alignloop@h:5433/db",
        "redis://h:6379/2",
    )
    assert "s3cret" not in json.dumps(params) and "r3dis" not in json.dumps(params)
    monkeypatch.setenv("ALIGNLOOP_POSTGRES_PASSWORD", "pg-pw")
    monkeypatch.setenv("ALIGNLOOP_REDIS_PASSWORD", "redis-pw")
    get_settings.cache_clear()
    try:
        assert _store_url(params["store_url"]) == "postgresql+psycopg://alignloop:pg-pw@h:5433/db"
        assert _redis_url(params["redis_url"]) == "redis://:redis-pw@h:6379/2"
        assert _store_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    finally:
        get_settings.cache_clear()


def test_a_taken_port_is_one_clear_error_and_starts_nothing(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(FlowsError, match=rf"^port {port} on 127.0.0.1 is taken.*--api-url"):
            start_prefect_server(port, tmp_path / "state")
    assert not (tmp_path / "state").exists()


def test_a_given_api_that_does_not_answer_is_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(FlowsError, match=r"does not answer /health"):
            connect_prefect_server(f"http://127.0.0.1:{port}/api")


def test_intervals_can_be_seconds_but_not_zero():
    assert FlowsSettings(data_check_interval_s=2, canary_watch_interval_s=1.5).canary_watch_interval_s == 1.5
    with pytest.raises(ValueError):
        FlowsSettings(data_check_interval_s=0)
