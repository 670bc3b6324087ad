"""Exception types shared across weft. Every error names what was wrong."""


class WeftError(Exception):
    """Base class for errors weft raises on bad input or failed runs."""


class TopologyError(WeftError, ValueError):
    """A topology file or object is malformed (unknown device, bad value, disconnected)."""


class PlanError(WeftError, ValueError):
    """A parallelism plan is malformed or infeasible."""


class LaunchError(WeftError, RuntimeError):
    """A rank failed; the message carries that rank's traceback."""

    def __init__(self, message: str, rank: int | None = None, traceback: str | None = None):
        super().__init__(message)
        self.rank = rank
        self.traceback = traceback
