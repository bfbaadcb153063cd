"""The error root of the retrain package: every failure it raises on purpose is a RetrainError."""

from alignloop.core import errors as contract_errors
from alignloop.core.errors import AlignloopError


class RetrainError(AlignloopError):
    """Base of the retrain package's errors; the message names the field, the rule and the value seen."""


class SnapshotError(RetrainError):
    """A dataset snapshot could not be built: too few records, a bad record, a bad policy."""


class NotEnoughDataError(SnapshotError):
    """Too few curated records for a snapshot: a scheduled turn skips rather than fails."""


class ConfigError(RetrainError):
    """A run config or gate policy file is missing or invalid."""


class TrainError(RetrainError):
    """Training failed; nothing was written to the output directory."""


class ArtifactError(RetrainError, contract_errors.ArtifactError):
    """An adapter artifact is missing files or does not match its manifest."""


class UnsupportedModelError(RetrainError):
    """A base model whose architecture alignloop cannot train as given (not a causal LM, no LoRA targets)."""
