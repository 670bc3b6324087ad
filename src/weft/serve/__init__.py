"""weft.serve: class-parallel decomposition and serving (sensAI). See docs/serve.md.

decompose() splits a trained classifier into pruned, calibrated class-group subnets (a Bundle);
Ensemble runs them in this process and WorkerPool across worker processes, both answering
predict(x) by the highest calibrated confidence; InferenceServer serves either over HTTP.

Names load on first use, so a worker process (or the `weft` command) imports only what it needs.
"""

import importlib

_EXPORTS = {
    "Bundle": "bundle", "Member": "bundle", "verify": "bundle",
    "DecomposeConfig": "decomposition", "decompose": "decomposition", "evaluate": "decomposition",
    "Ensemble": "ensemble", "combine": "ensemble",
    "BundleError": "errors", "ServeError": "errors", "UnsupportedModelError": "errors", "WorkerError": "errors",
    "ChannelGraph": "graph", "analyze": "graph",
    "count_flops": "pruning", "count_params": "pruning", "prune": "pruning",
    "WorkerPool": "workers",
    "InferenceServer": "http", "ServerConfig": "http", "BackgroundServer": "http",
}
__all__ = ["BackgroundServer", "Bundle", "BundleError", "ChannelGraph", "DecomposeConfig", "Ensemble",
           "InferenceServer", "Member", "ServeError", "ServerConfig", "UnsupportedModelError", "WorkerError",
           "WorkerPool", "analyze", "combine", "count_flops", "count_params", "decompose", "evaluate", "prune",
           "verify"]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"weft.serve.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'weft.serve' has no attribute {name!r}")
