"""The error root of the core package; each package has its own root beside it."""

# the root is defined in the SDK so that the errors an app sees from the SDK alone share it
from alignloop_sdk.errors import AlignloopError

__all__ = ["AlignloopError", "ArtifactError", "IntegrityError", "StackError", "StoreError"]


class StackError(AlignloopError):
    """A local service could not be installed, started, stopped or reached."""


class StoreError(AlignloopError):
    """The store could not be opened or migrated."""


class ArtifactError(AlignloopError):
    """An adapter artifact breaks its contract (alignloop.core.contracts): malformed, unsafe, or files unlisted."""


class IntegrityError(ArtifactError):
    """A file's sha256 does not match the one recorded for it: the artifact was changed after it was written."""
