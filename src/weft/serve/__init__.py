"""weft.serve: class-parallel decomposition and serving (sensAI). See docs/serve.md.

decompose() splits a trained classifier into pruned, calibrated class-group subnets (a Bundle);
Ensemble runs them in this process and WorkerPool across worker processes, both answering
predict(x) by the highest calibrated confidence; weft.serve.http serves either over HTTP.
"""

from weft.serve.bundle import Bundle, Member, verify
from weft.serve.decompose import DecomposeConfig, decompose, evaluate
from weft.serve.ensemble import Ensemble, combine
from weft.serve.errors import (
    BundleError,
    ServeError,
    UnsupportedModelError,
    WorkerError,
)
from weft.serve.graph import ChannelGraph, analyze
from weft.serve.prune import count_flops, count_params, prune
from weft.serve.workers import WorkerPool

__all__ = ["Bundle", "BundleError", "ChannelGraph", "DecomposeConfig", "Ensemble", "InferenceServer", "Member",
           "ServeError", "ServerConfig", "UnsupportedModelError", "WorkerError", "WorkerPool",
           "analyze", "combine", "count_flops", "count_params", "decompose", "evaluate", "prune", "verify"]


def __getattr__(name):  # the HTTP layer (aiohttp) loads only when asked for
    if name in ("InferenceServer", "ServerConfig", "BackgroundServer"):
        from weft.serve import http

        return getattr(http, name)
    raise AttributeError(name)
