"""Per-layer profiles: forward/backward time, activation, parameter and memory bytes.

    prof = profile_model(model, torch.randn(32, 64))  # nn.Sequential, fx- or export-traceable
    prof.save("mlp.profile.json"); ModelProfile.load("mlp.profile.json")

Each layer (see `weft.parallel.pipeline.layers`) is run on the real output of the layer
before it: the forward is timed, then the backward w.r.t. its input and its
parameters (median of `repeats` runs after a warm-up). `saved_bytes` is what
autograd keeps for the backward, measured with `saved_tensors_hooks`, and
`peak_bytes` is parameters + gradients + saved tensors + output: the memory the
layer holds while one micro-batch is in flight. All numbers are for
`batch_size` samples; `scaled(b)` rescales times and activations linearly.

A layer that changes its input in place (``nn.ReLU(inplace=True)`` at the start of a
layer) runs on a copy of its input, as the pipeline runtime runs such a stage. Each layer
records the modules it runs (``modules``, for split points by module name), and the
profile the parameters two or more layers share (``shared``: tied embeddings).

Profiles are cached as JSON under `cache_dir` (default `~/.cache/weft/profiles`),
keyed by the model's structure, the input shape/dtype and the torch version.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from weft.atomic import write_text
from weft.errors import PlanError
from weft.files import read_json
from weft.parallel.pipeline.layers import (as_sequential, find_blocks, layer_modules,
                                           mutates_input, shared_parameters)

FORMAT = "weft.profile/1"


@dataclass(frozen=True)
class LayerProfile:
    name: str
    forward_s: float
    backward_s: float
    output_bytes: float
    param_bytes: float
    saved_bytes: float = 0.0
    peak_bytes: float = 0.0
    output_shape: tuple = ()
    modules: tuple = ()  # qualified names of the modules the layer runs

    @property
    def compute_s(self) -> float:
        return self.forward_s + self.backward_s


@dataclass
class ModelProfile:
    layers: list[LayerProfile]
    batch_size: int = 1
    input_bytes: float = 0.0
    input_shape: tuple = ()
    dtype: str = "float32"
    meta: dict = field(default_factory=dict)
    shared: list = field(default_factory=list)  # [{"names", "layers", "numel", "bytes"}]

    def __len__(self) -> int:
        return len(self.layers)

    def scaled(self, batch_size: int) -> "ModelProfile":
        """The profile for another batch size (times and activations scale linearly)."""
        f = batch_size / self.batch_size
        layers = [replace(l, forward_s=l.forward_s * f, backward_s=l.backward_s * f,
                          output_bytes=l.output_bytes * f, saved_bytes=l.saved_bytes * f,
                          peak_bytes=2 * l.param_bytes + (l.saved_bytes + l.output_bytes) * f,
                          output_shape=(batch_size, *l.output_shape[1:]) if l.output_shape else ())
                  for l in self.layers]
        return ModelProfile(layers, batch_size, self.input_bytes * f,
                            (batch_size, *self.input_shape[1:]) if self.input_shape else (),
                            self.dtype, dict(self.meta), [dict(e) for e in self.shared])

    def layer_modules(self) -> list[list[str]]:
        """Per layer, the modules it runs (what split points are matched against)."""
        return [list(l.modules) for l in self.layers]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "batch_size": self.batch_size, "input_bytes": self.input_bytes,
                "input_shape": list(self.input_shape), "dtype": self.dtype, "meta": self.meta,
                "shared": self.shared,
                "layers": [dict(asdict(l), output_shape=list(l.output_shape),
                                modules=list(l.modules)) for l in self.layers]}

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "ModelProfile":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise PlanError(f"{source}: not a weft profile (format must be {FORMAT!r})")
        try:
            layers = [LayerProfile(**dict(l, output_shape=tuple(l.get("output_shape", ())),
                                          modules=tuple(l.get("modules", ()))))
                      for l in d["layers"]]
            return cls(layers, int(d["batch_size"]), float(d.get("input_bytes", 0)),
                       tuple(d.get("input_shape", ())), d.get("dtype", "float32"),
                       d.get("meta", {}), list(d.get("shared", [])))
        except (KeyError, TypeError) as exc:
            raise PlanError(f"{source}: malformed profile: {exc}") from None

    def save(self, path: str | os.PathLike) -> Path:
        return write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelProfile":
        return cls.from_dict(read_json(path, PlanError, "profile"), str(path))


def _nbytes(t) -> float:
    return float(t.numel() * t.element_size()) if torch.is_tensor(t) else 0.0


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def backward_ones(out, what: str = "the model") -> None:
    """Backward from every tensor of `out` that requires grad, each with a gradient of ones:
    `out` a tensor or any structure of them (tuples, dicts, Hugging Face's ModelOutput:
    torch's pytree leaves)."""
    import torch.utils._pytree as pytree

    outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not outs:
        raise PlanError(f"{what}'s output holds no tensor that requires grad: there is no "
                        "backward to time")
    torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])


def input_safe(layer: nn.Module, x: torch.Tensor):
    """`layer` as a function of its (leaf) input: on a copy when it changes its input in
    place (as the runtime runs such a stage), so every call sees the same input."""
    if mutates_input(layer, x):
        return lambda inp: layer(inp.clone())
    return layer


def profile_layer(name: str, layer: nn.Module, x: torch.Tensor, repeats: int = 5,
                  modules: tuple = ()):
    """Profile one layer on input `x`; returns (LayerProfile, its output)."""
    params = [p for p in layer.parameters() if p.requires_grad]
    inp = x.detach().requires_grad_(x.is_floating_point())
    run = input_safe(layer, inp)
    saved = []

    def pack(t):
        saved.append(_nbytes(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run(inp)
    if not torch.is_tensor(out):
        raise PlanError(f"layer {name!r} returns {type(out).__name__}; pipeline layers must "
                        "return one tensor")
    fwd = _time(lambda: run(inp), repeats)
    wrt = [inp] * inp.requires_grad + params
    bwd = 0.0
    if out.requires_grad and wrt:
        grad = torch.ones_like(out)

        def backward():
            o = run(inp)
            torch.autograd.grad(o, wrt, grad, allow_unused=True)

        bwd = max(_time(backward, repeats) - fwd, 0.0)  # backward() above re-runs the forward
    pbytes = float(sum(_nbytes(p) for p in layer.parameters()))
    sbytes = float(sum(saved))
    prof = LayerProfile(name, fwd, bwd, _nbytes(out), pbytes, sbytes,
                        2 * pbytes + sbytes + _nbytes(out), tuple(out.shape), tuple(modules))
    return prof, out.detach()


def _call_overhead(repeats: int) -> float:
    """The fixed cost of one autograd backward call (a stage pays it once, not per layer)."""
    a, g, times = torch.ones(1, requires_grad=True), torch.ones(1), []
    for _ in range(max(repeats, 10) + 1):
        out = a * 2.0
        t0 = time.perf_counter()
        torch.autograd.backward(out, g)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def sequence_times(layers: list[nn.Module], sample: torch.Tensor, repeats: int = 5,
                   statistic: str = "median"):
    """Per-layer (forward_s, backward_s) timed inside whole forward+backward passes.

    Each layer runs on its predecessor's real output with its neighbours' weights
    and activations competing for the cache, gradients accumulate into `.grad`
    as in training, and the first layer's input needs no gradient (as in the
    first pipeline stage). Timing layers one at a time in a tight loop instead
    keeps each layer's weights cache-hot (big layers look cheaper than they run
    next to each other) and charges tiny layers one autograd call each (a stage
    pays it once); the per-call overhead is therefore subtracted here.
    `statistic`: 'median' of the repeats per layer, or 'min' (the uncontended time on a
    shared machine, to compare with best-of-N measured runs).
    """
    if statistic not in ("median", "min"):
        raise PlanError(f"statistic must be 'median' or 'min', got {statistic!r}")
    pick = statistics.median if statistic == "median" else min
    L, tick = len(layers), time.perf_counter
    runs_f, runs_b, runners = [], [], []
    h = sample
    with torch.no_grad():  # which layers change their input in place (run on a copy)
        for layer in layers:
            runners.append(input_safe(layer, h))
            h = layer(h.clone())
    for rep in range(repeats + 1):  # the first pass is a warm-up
        fw, bw, xs, outs, h = [0.0] * L, [0.0] * L, [], [], sample
        for k, layer in enumerate(runners):
            inp = h.detach().requires_grad_(k > 0 and h.is_floating_point())
            t0 = tick()
            out = layer(inp)
            fw[k] = tick() - t0
            xs.append(inp)
            outs.append(out)
            h = out
        g = torch.ones_like(outs[-1])
        for k in reversed(range(L)):
            if outs[k].requires_grad:
                t0 = tick()
                torch.autograd.backward(outs[k], g)
                bw[k] = tick() - t0
            if k > 0:
                g = xs[k].grad if xs[k].grad is not None else torch.ones_like(outs[k - 1])
        if rep:
            runs_f.append(fw)
            runs_b.append(bw)
    for layer in layers:
        layer.zero_grad(set_to_none=True)
    over = _call_overhead(repeats)
    fwd = [pick([r[k] for r in runs_f]) for k in range(L)]
    bwd = [max(pick([r[k] for r in runs_b]) - over, 0.0) if runs_b[0][k] else 0.0
           for k in range(L)]
    return fwd, bwd


def structure_key(model: nn.Module, sample: torch.Tensor) -> str:
    """The cache key of a profile: the layers' structure and code, which parameters they
    share, the input and the torch version."""
    seq = model if isinstance(model, nn.Sequential) else None
    tied = [e["layers"] for e in shared_parameters(seq)] if seq is not None else []
    code = "".join(getattr(layer, "code", "") for layer in seq) if seq is not None else ""
    text = (f"{model!r}|{tuple(sample.shape)}|{sample.dtype}|{torch.__version__}|"
            f"{torch.get_num_threads()}|{tied}|{code}")
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(os.environ.get("WEFT_CACHE", Path.home() / ".cache" / "weft")) / "profiles"


def profile_model(model: nn.Module, sample: torch.Tensor, repeats: int = 5,
                  cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                  threads: int | None = 1, trace: str = "auto",
                  statistic: str = "median", output: str | None = None) -> ModelProfile:
    """Profile every layer of `model` on the batch `sample` (first dim = batch size).

    `threads` sets torch's intra-op threads while profiling (default 1, what each
    local rank uses); None keeps the current setting. `trace` picks how a
    non-Sequential model is cut into layers: 'fx', 'export' or 'auto' (fx, then
    torch.export on `sample`; see `weft.parallel.pipeline.layers`). `statistic`: per-layer 'median'
    of the repeats (default) or 'min' (see `sequence_times`). `output`: the field of a
    structured model output the loss uses (`as_sequential`).
    """
    seq = as_sequential(model, sample, trace, output)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _profile(seq, model, sample, repeats, cache_dir, use_cache, statistic)
    finally:
        torch.set_num_threads(old)


def _profile(seq, model, sample, repeats, cache_dir, use_cache, statistic) -> ModelProfile:
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{structure_key(seq, sample)}{'' if statistic == 'median' else '-min'}.json"
    if use_cache and path.exists():
        try:
            return ModelProfile.load(path)
        except PlanError:
            pass  # a stale or broken cache entry is simply rebuilt
    layers, x = [], sample
    with torch.enable_grad():
        for (name, layer), mods in zip(seq.named_children(), layer_modules(seq)):
            # bytes, shapes; times are replaced
            prof, x = profile_layer(name, layer, x, 1, tuple(mods))
            layers.append(prof)
        fwd, bwd = sequence_times(list(seq.children()), sample, repeats, statistic)
    layers = [replace(l, forward_s=f, backward_s=b) for l, f, b in zip(layers, fwd, bwd)]
    stage_overhead = _call_overhead(repeats)  # what the per-layer backward times exclude
    result = ModelProfile(layers, int(sample.shape[0]), _nbytes(sample), tuple(sample.shape),
                          str(sample.dtype).replace("torch.", ""),
                          {"model": type(model).__name__, "torch": torch.__version__,
                           "blocks": find_blocks(model),
                           "threads": torch.get_num_threads(), "statistic": statistic,
                           "stage_overhead_s": stage_overhead},
                          [{k: e[k] for k in ("names", "layers", "numel", "bytes")}
                           for e in shared_parameters(seq)])
    if use_cache:
        result.save(path)
    return result
