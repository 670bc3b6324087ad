"""Tick-tock waves train exactly like one wave on the summed batch, and keep their phase."""

import gc

import torch
import torch.distributed as dist
from torch import nn

from weft.errors import PlanError
from weft.launch import launch
from weft.parallel.groups import transport_threads
from weft.parallel.wavelet import Wavelet, layout

STEPS, BATCH, SEED = 4, 48, 3   # BATCH: the global batch of every step


def _net():
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 5))


def _data():
    g = torch.Generator().manual_seed(11)
    return torch.randn(STEPS * BATCH, 12, generator=g), torch.randint(0, 5, (STEPS * BATCH,),
                                                                      generator=g)


def _train(model, part=0, parts=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    x, y = _data()
    local = BATCH // parts
    for s in range(STEPS):
        lo = s * BATCH + part * local
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[lo:lo + local]), y[lo:lo + local]).backward()
        opt.step()


PHASES = {"at backward start": {"signal_at": 0.0}, "default (half the backward)": {},
          "at backward end": {"signal_at": 1.0}, "gang": {"stagger": False}}
# every phase with each way of combining the waves' gradients (the default: "last")
MODES = {**PHASES, **{f"{k}, each wave all-reduces": dict(v, combine="each")
                      for k, v in PHASES.items()}}
# the worker's waves hand each other buckets through gloo messages instead of shared memory
MODES.update({f"{k}, gloo on the worker": dict(v, local="gloo")
              for k, v in PHASES.items() if k in ("default (half the backward)", "gang")})
STAGGERED = [m for m, kw in MODES.items() if kw.get("stagger", True)]


def _local_way(kw):
    return "shared" if kw.get("combine", "last") == "last" and "local" not in kw else "gloo"


def _worker(waves):
    out = {}
    for mode, kw in MODES.items():
        torch.manual_seed(SEED + dist.get_rank())  # unequal starts: the broadcast must fix them
        net = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(),
                            nn.Linear(32, 5))
        model = Wavelet(net, waves=waves, bucket_cap_mb=0.001, **kw)
        assert model.local == _local_way(kw), (mode, model.local)
        _train(model, dist.get_rank(), dist.get_world_size())
        before, groups = transport_threads(), list(model._groups)
        model.close()
        left = sum(g in dist.distributed_c10d._world.pg_map for g in groups)
        del groups
        gc.collect()
        freed = (left, before - transport_threads())
        if mode == "gang":  # no signal to wait for: a step after close() fails at once
            try:
                _train(model, dist.get_rank(), dist.get_world_size())
            except PlanError as exc:
                freed += (str(exc),)
        out[mode] = ({k: v.clone() for k, v in net.state_dict().items()},
                     layout(waves), model.started, model.signalled, freed)
    return out


def test_tick_tock_equals_one_wave_on_the_summed_batch():
    ref = _net()
    _train(ref)                                  # one process, the whole batch
    ranks = launch(_worker, 4, args=(2,), timeout=120)   # 2 waves x 2 workers
    for mode in MODES:
        for rank, res in enumerate(ranks):
            state, (wave, worker, workers), _, _, freed = res[mode]
            assert (wave, worker, workers) == (rank // 2, rank % 2, 2)
            # close() destroyed its wave and worker groups, and their transport threads ended
            assert freed[:2] == (0, 2), (mode, rank, freed)
            if mode == "gang":
                assert "this Wavelet was closed" in freed[2]
            for k, v in ref.state_dict().items():
                assert torch.allclose(state[k], v, atol=1e-5, rtol=0), \
                    (mode, rank, k, (state[k] - v).abs().max())
    # in phase: on each worker the tock wave's forward of step s starts only after the tick
    # wave's backward of step s began (the signal), and before its step s + 1 began
    for mode in STAGGERED:
        for worker in range(2):
            tick, tock = ranks[worker][mode], ranks[2 + worker][mode]
            assert len(tick[3]) == len(tock[2]) == STEPS
            for s in range(STEPS):
                assert tick[3][s] <= tock[2][s]
                if s + 1 < STEPS:
                    assert tock[2][s] <= tick[3][s + 1]


def test_an_unknown_combine_is_refused_before_any_group_is_made():
    import pytest

    with pytest.raises(PlanError, match="combine must be one of last, each, got 'both'"):
        Wavelet(nn.Linear(2, 2), waves=2, combine="both")   # no process group exists here
