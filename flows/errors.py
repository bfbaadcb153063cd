"""The error root of flows."""

from alignloop.core.errors import AlignloopError


class FlowsError(AlignloopError):
    """A flow could not run, or was asked to do something it must not."""
