"""Ingest settings come from ALIGNLOOP_INGEST_* and the source key is created once, private; sources hash by key."""

from __future__ import annotations

import stat

import pytest

from ingest.settings import IngestSettings, load_source_key
from ingest.sources import source_hash
from ingest.topics import FEEDBACK_TOPIC


def test_env_prefix(monkeypatch):
    monkeypatch.setenv("ALIGNLOOP_INGEST_PARTITIONS", "12")
    monkeypatch.setenv("ALIGNLOOP_INGEST_PORT", "9000")
    s = IngestSettings()
    assert (s.partitions, s.port, s.topic) == (12, 9000, FEEDBACK_TOPIC)


def test_source_key_is_random_once_and_private(tmp_path):
    first = load_source_key(IngestSettings(), tmp_path)
    assert first == load_source_key(IngestSettings(), tmp_path) and len(first) == 64
    assert stat.S_IMODE((tmp_path / "secrets" / "ingest-source-key").stat().st_mode) == 0o600
    assert load_source_key(IngestSettings(source_key="given"), tmp_path) == b"given"


def test_source_hash_is_keyed_and_groups_one_subscriber():
    h = source_hash(b"k1", "203.0.113.9")
    assert len(h) == 32 and h == source_hash(b"k1", " 203.0.113.9") == source_hash(b"k1", "::ffff:203.0.113.9")
    assert h != source_hash(b"k2", "203.0.113.9") != source_hash(b"k1", "203.0.113.10")
    # IPv6 by /64: the privacy addresses of one subscriber are one source; another /64 is another
    assert source_hash(b"k1", "2001:db8:1:2::1") == source_hash(b"k1", "2001:db8:1:2:abcd::9")
    assert source_hash(b"k1", "2001:db8:1:2::1") != source_hash(b"k1", "2001:db8:1:3::1")
    for bad in ("", "localhost", "1.2.3", "300.1.1.1", None, 7):
        with pytest.raises(ValueError):
            source_hash(b"k1", bad)
