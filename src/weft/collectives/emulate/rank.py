"""One rank of a `NetnsCluster.run` (started inside its namespace)."""

from __future__ import annotations

import ctypes
import datetime
import importlib
import importlib.util
import json
import pickle
import signal
import sys


def _load(fn: str):
    mod, _, name = fn.rpartition(":")
    if mod.endswith(".py"):
        spec = importlib.util.spec_from_file_location("_weft_netns_fn", mod)
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
    else:
        m = importlib.import_module(mod)
    return getattr(m, name)


def main(spec: dict) -> None:
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # die with the parent
    except OSError:
        pass
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=spec["init"], rank=spec["rank"],
                            world_size=spec["world"],
                            timeout=datetime.timedelta(seconds=spec["timeout"]))
    try:
        result = _load(spec["fn"])(**spec["args"])
        from weft.atomic import atomic_path

        with atomic_path(spec["out"]) as tmp:
            tmp.write_bytes(pickle.dumps(result))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
