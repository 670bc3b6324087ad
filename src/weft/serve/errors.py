"""Errors raised by weft.serve; each names the file, field, node or value at fault."""

from __future__ import annotations

from weft.errors import WeftError


class ServeError(WeftError, ValueError):
    """Bad input to decomposition or serving: an option, a data set, a request."""


class UnsupportedModelError(ServeError):
    """The model is not a classifier, or has a structure channel pruning does not handle.

    The message names the fx node (and its op) at fault and what is supported.
    """


class BundleError(ServeError):
    """A decomposition bundle is missing, truncated, altered or malformed (names the file)."""


class WorkerError(WeftError, RuntimeError):
    """A serving worker process failed or did not answer in time (carries its traceback)."""
