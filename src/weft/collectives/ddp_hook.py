"""A DDP communication hook that all-reduces gradient buckets with weft.

    model = DDP(model)
    weft.collectives.ddp_hook.register(model, "dgx1")   # one line

The hook averages each bucket with a `WeftCommunicator` (topology-aware
schedule chosen per bucket size) instead of gloo/NCCL's built-in all-reduce.
"""

import torch
import torch.distributed as dist

from weft.collectives.weft_comm import WeftCommunicator


def weft_allreduce_hook(comm, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: average the bucket's flat gradient buffer over the group, in the
    background (DDP waits on the returned future at the end of backward)."""
    return comm.all_reduce(bucket.buffer(), op="avg", async_op=True).get_future()


def register(model, topology="auto", communicator=None, **kw):
    """Make DDP `model` all-reduce its gradients with weft; returns the communicator."""
    comm = communicator or WeftCommunicator(topology, group=model.process_group, **kw)
    model.register_comm_hook(comm, weft_allreduce_hook)
    return comm
