"""The deploy error root and its kinds; each message names the field, the rule and the value seen."""

from alignloop.core import errors as contract_errors
from alignloop.core.errors import AlignloopError


class DeployError(AlignloopError):
    """Base of every error the deploy package raises on purpose."""


class ArtifactError(DeployError, contract_errors.ArtifactError):
    """An adapter artifact is malformed, unsafe (pickle, path escape) or fails its sha256 check."""


class IntegrityError(ArtifactError, contract_errors.IntegrityError):
    """A file's sha256 does not match the one recorded for it: the artifact was changed after it was written."""


class RegistryError(DeployError):
    """A registry move is not allowed from the current state (unknown version, wrong status, no canary)."""


class NotFoundError(RegistryError):
    """No adapter version by that name is registered."""


class ServingError(DeployError):
    """Serving could not start or answer (no base model, bad request values)."""


class RefusedError(ServingError):
    """A chat request turned away at the door: no valid key (401), too large (413), over its key's rate or the
    queue (429, with `retry_after` seconds), or not answered in time (504)."""

    def __init__(self, status: int, message: str, *, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class EngineError(ServingError):
    """The engine behind the router failed (502) or none of its servers can take the request (503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
