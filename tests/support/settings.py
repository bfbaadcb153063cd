"""Settings for tests that configure a package through the environment (monkeypatch) and need it read again."""

from __future__ import annotations

import importlib
from contextlib import suppress

SETTINGS_MODULES = (
    "alignloop.core.settings",
    "ingest.settings",
    "curation.settings",
    "retrain.settings",
    "deploy.settings",
    "flows.settings",
)


def clear_settings_caches() -> None:
    """Forget every package's cached settings, so the next `get_settings()` reads the environment again."""
    for mod in SETTINGS_MODULES:
        with suppress(ImportError, AttributeError):
            importlib.import_module(mod).get_settings.cache_clear()
