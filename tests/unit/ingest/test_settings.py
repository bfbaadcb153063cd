"""Ingest settings come from ALIGNLOOP_INGEST_* and the IP salt is created once, private."""

from __future__ import annotations

import stat

from ingest.settings import IngestSettings, load_ip_salt
from ingest.topics import FEEDBACK_TOPIC


def test_env_prefix(monkeypatch):
    monkeypatch.setenv("ALIGNLOOP_INGEST_PARTITIONS", "12")
    monkeypatch.setenv("ALIGNLOOP_INGEST_PORT", "9000")
    s = IngestSettings()
    assert (s.partitions, s.port, s.topic) == (12, 9000, FEEDBACK_TOPIC)


def test_ip_salt_is_random_once_and_private(tmp_path):
    first = load_ip_salt(IngestSettings(), tmp_path)
    assert first == load_ip_salt(IngestSettings(), tmp_path) and len(first) == 64
    assert stat.S_IMODE((tmp_path / "ingest" / "ip-salt").stat().st_mode) == 0o600
    assert load_ip_salt(IngestSettings(ip_salt="given"), tmp_path) == b"given"
