import pytest
import torch
import torch.distributed as dist
from torch import nn

from weft.errors import WeftError
from weft.launch import launch
from weft.parallel import data_parallel, load_checkpoint, restore, save_checkpoint, training_state


def test_round_trip_restores_model_and_optimizer(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.pt", training_state(model, opt, step=5, epoch=1))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left
    other = nn.Linear(3, 2)
    opt2 = torch.optim.Adam(other.parameters())
    state = load_checkpoint(tmp_path / "c.pt")
    assert restore(state, other, opt2) == 5 and state["epoch"] == 1
    assert torch.equal(other.weight, model.weight)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(WeftError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeftError, match="unreadable"):
        load_checkpoint(tmp_path / "bad.pt")


def _save_from_all(path):
    model = data_parallel(nn.Linear(2, 2))
    written = save_checkpoint(path, training_state(model, step=dist.get_rank()))
    dist.barrier()
    return written is not None


def test_only_rank0_writes(tmp_path):
    assert launch(_save_from_all, 2, args=(str(tmp_path / "c.pt"),), timeout=30) == [True, False]
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 0
