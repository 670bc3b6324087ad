"""The tick-tock pipeline schedule: valid for every shape, the validator rejects broken ones,
and the runtime trains with it exactly like gradient accumulation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weft.errors import PlanError
from weft.launch import launch
from weft.parallel.pipeline.actions import Action
from weft.parallel.pipeline.schedule import build_schedule, validate_schedule
from weft.parallel.pipeline.ticktock import build_ticktock, compute_order, waves_of


def in_flight(actions):
    live, worst = set(), 0
    for a in actions:
        if a.kind == "F":
            live.add(a.mb)
        elif a.kind == "B":
            live.discard(a.mb)
        worst = max(worst, len(live))
    return worst


@pytest.mark.parametrize("reps", [[[0]], [[0], [1]], [[0], [1], [2]], [[0], [1], [2], [3]],
                                  [[0, 1], [2]], [[0], [1, 2]]])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 7, 8])
@pytest.mark.parametrize("waves", [2, 3])
def test_validator_accepts_ticktock(reps, M, waves):
    sched = build_ticktock(reps, M, waves)         # lowered and validated
    validate_schedule(sched, reps, M)
    size = -(-M // waves)
    for acts in sched.values():
        assert in_flight(acts) <= size + 1          # one wave (and one more) in flight, not M
    if waves == 2:
        assert build_schedule("ticktock", reps, M) == sched   # the hook in schedule.py


def test_tock_forwards_replace_tick_backwards():
    assert waves_of(5) == [[0, 1, 2], [3, 4]]
    order = [str(a) for a in compute_order([[0], [1]], 4)[0]]
    assert order == ["0F0", "0F1", "0F2", "0B0", "0F3", "0B1", "0B2", "0B3"]
    gpipe = build_schedule("gpipe", [[0], [1], [2]], 8)
    assert in_flight(gpipe[0]) == 8 and in_flight(build_ticktock([[0], [1], [2]], 8)[0]) == 5


def _broken(sched, rank, edit):
    out = {r: list(a) for r, a in sched.items()}
    edit(out[rank])
    return out


def test_validator_rejects_broken_ticktock():
    reps, M = [[0], [1]], 4
    good = build_ticktock(reps, M)
    # stage 0 runs the tick wave's first backward before the tock wave's first forward:
    # stage 1 waits for that forward before it sends the gradient, stage 0 waits for the
    # gradient before it sends the forward - a deadlock
    def swap(acts):
        i = acts.index(Action("F", 2, 0))            # F2, SEND_F2 ...
        j = acts.index(Action("RECV_B", 0, 0, 1))    # ... then RECV_B0, B0
        acts[i:j + 2] = acts[j:j + 2] + acts[i:j]
    with pytest.raises(PlanError, match="deadlocks"):
        validate_schedule(_broken(good, 0, swap), reps, M)
    with pytest.raises(PlanError, match="never runs"):
        validate_schedule(_broken(good, 1, lambda a: [a.remove(Action("B", 3, 1)),
                                                      a.remove(Action("SEND_B", 3, 1, 0))]),
                          reps, M)
    with pytest.raises(PlanError, match="which it needs"):   # a backward before its forward
        validate_schedule(_broken(good, 0, lambda a: a.insert(0, a.pop(a.index(
            Action("B", 3, 0))))), reps, M)
    with pytest.raises(PlanError, match="one chunk per stage"):
        build_schedule("ticktock", reps, M, 2)


STEPS, MB, BATCH = 2, 4, 16


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 3))


def _opt(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _data():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 6, generator=g), torch.randint(0, 3, (BATCH,), generator=g))
            for _ in range(STEPS)]


def _run():
    from weft.parallel.pipeline.runtime import Pipeline

    pipe = Pipeline(_model(), [(0, 2), (2, 5)], [[0], [1]], F.cross_entropy, "ticktock", MB,
                    optimizer=_opt)
    for x, y in _data():
        pipe.step(x, y)
    return {l: [t.copy() for t in sd.values()] for l, sd in pipe.state_by_layer().items()}


def test_runtime_trains_with_ticktock():
    model = _model()
    o = _opt(model.parameters())
    for x, y in _data():
        for xm, ym in zip(x.chunk(MB), y.chunk(MB)):
            (F.cross_entropy(model(xm), ym) / MB).backward()
        o.step()
        o.zero_grad()
    results = launch(_run, 2, timeout=60)
    got = {**results[0], **results[1]}
    assert sorted(got) == list(range(len(model)))
    for i, layer in enumerate(model):
        for g, want in zip(got[i], layer.state_dict().values()):
            assert torch.allclose(torch.from_numpy(g), want, atol=1e-5, rtol=0), i
