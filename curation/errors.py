"""The curation error root: every error the curation package raises on purpose, documented in one place."""

from __future__ import annotations

from alignloop.core.errors import AlignloopError


class CurationError(AlignloopError):
    """Base of every error the curation package raises on purpose."""


class ReplayError(CurationError):
    """An offline replay could not read its input or write its outputs."""


class ConfigError(CurationError):
    """A curation setting is out of its allowed range; the message names the field, the rule and the value."""
