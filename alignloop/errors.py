"""The error root of the core package; each package has its own root beside it."""


class AlignloopError(Exception):
    """Base of every error alignloop raises on purpose; its message is one line for a person."""


class StackError(AlignloopError):
    """A local service could not be installed, started, stopped or reached."""


class StoreError(AlignloopError):
    """The store could not be opened or migrated."""
