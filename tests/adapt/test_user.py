"""Adaptive training of a user's own model, data, optimizer and LR scheduler (real gloo ranks):
a CNN weft has never seen, on a map-style dataset of the test's own class, with Adam and a
StepLR schedule, resized 2 -> 4 -> 3, surviving a SIGKILL and resumed from its checkpoint
by another number of workers, equals a single-process reference that trains the same global
batches without resizing."""

from collections import Counter

import pytest
import torch
from torch import nn

from weft.adapt import AdaptConfig, ScheduleResize, Workload
from weft.adapt.host import run_elastic
from weft.adapt.sharding import EpochSharder
from weft.adapt.workload import check

N, GLOBAL, STEPS = 360, 24, 30  # 15 steps per epoch, 2 epochs
FIRST, KILL = 22, 14  # the first run's steps; the step a worker is SIGKILLed at


class Digits(torch.utils.data.Dataset):
    """Map-style (not a TensorDataset): items are (image, label) pairs."""

    def __init__(self):
        from weft.demo.data import digits

        x, y = digits(flat=False)[0].tensors
        self.x, self.y = x[:N].clone(), y[:N].clone()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class SmallCNN(nn.Module):
    """torchvision-style: features (conv, GroupNorm, ReLU, pool) then a classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8),
                                      nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(),
                                        nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def cnn():
    torch.manual_seed(0)
    return SmallCNN()


def adam(params):
    return torch.optim.Adam(params, lr=3e-3)


def step_lr(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)


class Seen:
    """User state: samples trained on (rolled back with the model after a failure)."""

    def __init__(self):
        self.samples = 0

    def state_dict(self):
        return {"samples": self.samples}

    def load_state_dict(self, d):
        self.samples = d["samples"]


class CountSamples:
    def on_step_end(self, run):
        run.state.samples += int(run.metrics["samples"])
        run.log(seen=run.state.samples)


def workload():
    return Workload(cnn, Digits(), nn.functional.cross_entropy, adam, step_lr,
                    callbacks=(CountSamples(),), state=Seen())


def reference(steps: int) -> dict:
    """One process, the same global batches in the same order, no resizing."""
    data, model = Digits(), cnn()
    opt = adam(model.parameters())
    sched = step_lr(opt)
    order = EpochSharder(N, 0)
    for s in range(steps):
        epoch, at = divmod(s * GLOBAL, N)
        idx = order.permutation(epoch)[at:at + GLOBAL]
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
        opt.step()
        sched.step()
    return model.state_dict()


@pytest.mark.slow
def test_user_model_adam_resize_sigkill_and_resume_equal_the_reference(tmp_path):
    """One job, then its resumption: 2 -> 4 -> 3 workers, a SIGKILL (2 left), asynchronous
    checkpoints; the job ends at step FIRST and 3 workers resume from its checkpoint to
    STEPS. Parameters equal the reference's (1e-5), replicas and Adam states are identical
    after every change, and each epoch's samples are trained exactly once."""
    from weft.adapt import fit

    ckpt = tmp_path / "ckpt"
    cfg = AdaptConfig(workers=2, max_workers=4, epochs=2, max_steps=FIRST, batch_size=12,
                      batch_rule="global", log_samples=True, kill=[KILL, 1],
                      checkpoint=str(ckpt), checkpoint_every=5)
    w = workload().portable()
    assert check(w, cfg.workers, cfg.batch_size) == N
    out = run_elastic(cfg, ScheduleResize({4: 4, 9: 3}), timeout=400, workload=w)
    reports = out["reports"]
    assert out["dead"] == {1: -9}
    finals = [r for r in reports.values() if r["role"] != "standby" and not r["left"]
              and r.get("rank") is not None]
    assert len(finals) == 2 and sorted(r["rank"] for r in finals) == [0, 1]
    # the world went 2 -> 4 -> 3 -> (SIGKILL) 2, without restarting the survivors
    r0 = reports[0]
    assert [(m["world"], m["why"]) for m in r0["memberships"]] == [
        (2, "start"), (4, "resize"), (3, "resize"), (2, "failure")]
    assert {m["pid"] for m in r0["memberships"]} == {out["pids"][0]}
    # Adam state (and parameters) bit-identical on every member right after each change:
    # joiners received rank 0's optimizer moments, survivors the snapshot's
    digests: dict = {}
    for r in reports.values():
        for m in r.get("memberships", []):
            if "digest" in m:
                digests.setdefault(m["epoch"], set()).add(m["digest"])
    assert sorted(digests) == [0, 1, 2, 3] and all(len(d) == 1 for d in digests.values())
    # final replicas bit-identical: parameters and the whole optimizer state
    a, b = (r["state"] for r in finals)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, st in a["optim"]["state"].items():
        for name, v in st.items():
            assert torch.equal(v, b["optim"]["state"][k][name]), (k, name)
    assert finals[0]["user_state"] == {"samples": FIRST * GLOBAL}  # rolled back with the model
    (fail,) = [e for e in r0["events"] if e["kind"] == "failure"]
    assert fail["step"] == KILL and fail["lost"] == [1]
    # every rank trained its own disjoint slice of its step's global batch
    hist = {h["step"]: h for r in finals for h in r["history"]}
    assert sorted(hist) == list(range(1, FIRST + 1))
    slices: dict = {}
    for r in reports.values():
        for step, ep, idx in r.get("samples", []):
            slices.setdefault(step, []).append((ep, idx))
    order = EpochSharder(N, 0)
    for step, parts in slices.items():
        ep, lo = hist[step + 1]["at"]
        batch = order.permutation(ep)[lo:lo + GLOBAL].tolist()
        got = Counter(i for e, idx in parts for i in idx)
        assert {e for e, _ in parts} == {ep} and set(got.values()) == {1} and set(got) <= set(batch)
        if step >= KILL:  # every member of these steps reported (the victim's log died with it)
            assert sorted(got) == sorted(batch)
    assert [c["step"] for c in r0["checkpoints"]] == [5, 10, 15, 20, FIRST]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing half-written left

    # everything lost: 3 workers resume from the checkpoint and finish
    second = fit(cnn, Digits(), nn.functional.cross_entropy, adam, scheduler=step_lr,
                 callbacks=[CountSamples()], state=Seen(),
                 config=dict(workers=3, max_workers=3, standby=0, epochs=2, max_steps=STEPS,
                             batch_size=12, batch_rule="global", checkpoint=str(ckpt),
                             resume=True), timeout=300)
    (resumed,) = [e for e in second["events"] if e["kind"] == "resume"]
    assert resumed["step"] == FIRST and "written by 2 worker(s), now 3" in resumed["detail"]
    assert "starts afresh (the checkpoint's was ScheduleResize)" in resumed["detail"]
    assert second["steps"] == STEPS and second["history"][0]["step"] == FIRST + 1
    assert {h["world"] for h in second["history"]} == {3} and second["replicas_identical"]
    assert second["user_state"] == {"samples": STEPS * GLOBAL}  # through the checkpoint
    # no sample lost or repeated over both runs: the steps' global batches tile each epoch
    hist.update({h["step"]: h for h in second["history"]})
    assert sorted(hist) == list(range(1, STEPS + 1))
    for ep in (0, 1):
        spans = sorted((h["at"][1], h["global_batch"]) for h in hist.values()
                       if h["at"][0] == ep)
        assert [lo for lo, n in spans] == list(range(0, N, GLOBAL))
        assert {n for _, n in spans} == {GLOBAL}
    # the LR schedule went on through the resizes, the failure and the resumption
    assert [hist[s]["lr"] for s in sorted(hist)] == pytest.approx(
        [3e-3 * 0.5 ** (s // 10) for s in range(1, STEPS + 1)])
    # the same parameters as the reference that never resized (S-SGD, tolerance 1e-5),
    # at the end of the first run and after the resumption
    for k, v in reference(FIRST).items():
        torch.testing.assert_close(a["model"][k], v, rtol=0, atol=1e-5, msg=k)
    trained = second["model"].state_dict()
    for k, v in reference(STEPS).items():
        torch.testing.assert_close(trained[k], v, rtol=0, atol=1e-5, msg=k)


def test_checkpoint_writes_are_atomic_and_resume_errors_are_clear(tmp_path):
    from weft.adapt.durable import CheckpointError, meta, read, write

    from torch.distributed.checkpoint.state_dict import get_state_dict

    model = cnn()
    opt = adam(model.parameters())
    data = Digits()
    nn.functional.cross_entropy(model(data.x[:4]), data.y[:4]).backward()
    opt.step()
    msd, osd = get_state_dict(model, opt)
    write(tmp_path / "c", msd, osd, {"step": 3}, {"step": 3})
    assert meta(tmp_path / "c")["step"] == 3
    with pytest.raises(Exception):  # a state that cannot be written: the old one stays
        write(tmp_path / "c", msd, osd, {"step": 9, "fn": lambda: 0}, {"step": 9})
    assert meta(tmp_path / "c")["step"] == 3
    got, _, extra = read(tmp_path / "c", cnn, adam)
    assert extra["step"] == 3 and all(torch.equal(got[k], msd[k]) for k in msd)
    with pytest.raises(CheckpointError, match="nothing to resume from"):
        meta(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        read(tmp_path / "c", lambda: nn.Linear(3, 2), adam)
