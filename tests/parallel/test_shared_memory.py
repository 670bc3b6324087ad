"""A SharedBlock is the same bytes on every rank of its group, leaves no name behind, and is
None on every rank when one of them cannot map it."""

import os

import torch
import torch.distributed as dist

import weft.parallel.shared_memory as shm
from weft.launch import launch


def _worker(bad_dir):
    group = dist.new_group([0, 1])
    def ours():
        return {n for n in os.listdir(shm.SHM_DIR) if n.startswith("weft-")}

    before = ours()
    block = shm.SharedBlock.create(group, owner=1, nbytes=4096)
    dist.barrier()
    left = ours() - before  # the owner removed the name once every rank had mapped it
    view = block.tensor[64:64 + 4 * 8].view(torch.float32)
    if dist.get_rank() == 0:
        view.copy_(torch.arange(8, dtype=torch.float32))
    dist.barrier()
    seen = view.clone()
    dist.barrier()
    block.close()
    seen_after_close = view.sum().item()   # the view keeps the mapping alive
    # the owner's directory does not exist: no rank gets a block
    if dist.get_rank() == 1:
        shm.SHM_DIR = bad_dir
    failed = shm.SharedBlock.create(group, owner=1, nbytes=4096)
    return seen, sorted(left), seen_after_close, failed is None


def test_a_block_is_shared_and_refused_everywhere_when_one_rank_cannot_map_it(tmp_path):
    ranks = launch(_worker, 2, args=(str(tmp_path / "missing"),), timeout=60)
    for seen, left, after_close, failed in ranks:
        assert torch.equal(seen, torch.arange(8, dtype=torch.float32))
        assert left == []
        assert after_close == 28.0
        assert failed
