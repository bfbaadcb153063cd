"""The deploy error root and its kinds; each message names the field, the rule and the value seen."""

from alignloop.errors import AlignloopError


class DeployError(AlignloopError):
    """Base of every error the deploy package raises on purpose."""


class ArtifactError(DeployError):
    """An adapter artifact is malformed, unsafe (pickle, path escape) or fails its sha256 check."""


class IntegrityError(ArtifactError):
    """A file's sha256 does not match the one recorded for it: the artifact was changed after it was written."""


class RegistryError(DeployError):
    """A registry move is not allowed from the current state (unknown version, wrong status, no canary)."""


class NotFoundError(RegistryError):
    """No adapter version by that name is registered."""


class ServingError(DeployError):
    """Serving could not start or answer (no base model, bad request values)."""
