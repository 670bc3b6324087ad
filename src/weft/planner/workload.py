"""What one training step of a model costs, layer by layer, as a function of the plan.

A `Workload` is the model seen by the plan cost model (`weft.planner.plan_cost`): a
chain of `Layer`s (the pieces a pipeline may cut between), each with costs per sample
that are linear in ``1 / tp`` (the tensor-parallel degree):

    forward seconds at micro-batch b and degree t = fixed + b * (rep + split / t)

and likewise for the backward, the parameters (bytes: replicated + split / t) and the
activations saved for the backward (bytes per sample). Each layer also lists its
tensor-parallel collectives (kind, forward or backward, bytes per sample of the whole
tensor) and the bytes per sample it hands to the next layer (a pipeline boundary), and how many
parameter tensors it holds (the optimizer and fully_shard pay per tensor).

Two sources: `weft.planner.profile_units.profile_workload` measures a real model under
a plan's tensor-parallel rules (CPU timings, exact bytes), and `transformer` writes one
down from a GPT-style configuration (FLOPs over the device's FLOP/s, activation bytes
after Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models",
2022), for models too big to run here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from weft.atomic import write_text
from weft.errors import PlanError
from weft.files import read_json

FORMAT = "weft.workload/1"
KINDS = ("allreduce", "all_gather", "reduce_scatter")


@dataclass(frozen=True)
class Collective:
    """A tensor-parallel collective over the tp group, per micro-batch."""

    kind: str  # allreduce | all_gather | reduce_scatter
    phase: str  # forward | backward
    nbytes: float  # per sample, of the whole (unsplit) tensor
    module: str = ""


@dataclass(frozen=True)
class Split:
    """rep + split / t (per sample where it is a time or activation)."""

    rep: float = 0.0
    split: float = 0.0

    def at(self, tp: int) -> float:
        return self.rep + self.split / tp

    @property
    def whole(self) -> float:
        return self.rep + self.split


@dataclass(frozen=True)
class Layer:
    name: str
    split_at: str | None  # module that starts a pipeline stage beginning here (None: cannot)
    forward: Split  # seconds per sample
    backward: Split
    params: Split  # bytes (not per sample)
    saved: Split  # bytes per sample saved for the backward
    out_bytes: float  # per sample, to the next layer
    in_bytes: float = 0.0  # per sample, from the previous layer (what a checkpoint keeps)
    fixed_s: float = 0.0  # seconds per micro-batch independent of its size (fwd + bwd)
    collectives: tuple[Collective, ...] = ()
    modules: tuple[str, ...] = ()  # the model's modules in this layer (fsdp units)
    tensors: int = 0  # parameter tensors (what the optimizer and fully_shard handle one by one)
    tp_tensors: int = 0  # of them, those of tensor-parallel modules (DTensors when tp > 1)

    def compute_s(self, b: float, tp: int) -> float:
        return self.fixed_s + b * (self.forward.at(tp) + self.backward.at(tp))


@dataclass
class Workload:
    """A model as the plan cost model sees it (see the module doc)."""

    layers: list[Layer]
    name: str = "model"
    input_bytes: float = 0.0  # per sample
    param_dtype_bytes: int = 4
    tp_max: int = 1  # the largest tp degree the tensor-parallel rules allow (divisibility)
    tp_degrees: tuple[int, ...] = (1,)  # every allowed tp degree
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def param_bytes(self) -> float:
        return sum(l.params.whole for l in self.layers)

    def splittable(self, i: int) -> bool:
        """Whether a pipeline stage may start at layer i."""
        return i > 0 and self.layers[i].split_at is not None

    def to_dict(self) -> dict:
        return {"format": FORMAT, "name": self.name, "input_bytes": self.input_bytes,
                "param_dtype_bytes": self.param_dtype_bytes, "tp_max": self.tp_max,
                "tp_degrees": list(self.tp_degrees), "meta": self.meta,
                "layers": [asdict(l) for l in self.layers]}

    @classmethod
    def from_dict(cls, d: dict, source: str = "<workload>") -> Workload:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise PlanError(f"{source}: not a weft workload (format must be {FORMAT!r})")
        try:
            layers = []
            for l in d["layers"]:
                l = dict(l)
                for k in ("forward", "backward", "params", "saved"):
                    l[k] = Split(**l[k])
                l["collectives"] = tuple(Collective(**c) for c in l.get("collectives", ()))
                l["modules"] = tuple(l.get("modules", ()))
                layers.append(Layer(**l))
            return cls(layers, d.get("name", "model"), float(d.get("input_bytes", 0.0)),
                       int(d.get("param_dtype_bytes", 4)), int(d.get("tp_max", 1)),
                       tuple(d.get("tp_degrees", (1,))), d.get("meta", {}))
        except (KeyError, TypeError) as exc:
            raise PlanError(f"{source}: malformed workload: {exc}") from None

    def save(self, path: str | os.PathLike) -> Path:
        return write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Workload:
        return cls.from_dict(read_json(path, PlanError, "workload"), str(path))

    def scaled(self, compute: float) -> Workload:
        """The same workload with every time multiplied by `compute`."""
        def s(x: Split) -> Split:
            return Split(x.rep * compute, x.split * compute)
        return replace(self, layers=[replace(l, forward=s(l.forward), backward=s(l.backward),
                                             fixed_s=l.fixed_s * compute) for l in self.layers])


def divisors_upto(values: list[int], limit: int) -> tuple[int, ...]:
    """Degrees t <= limit that divide every value."""
    return tuple(t for t in range(1, limit + 1) if all(v % t == 0 for v in values))


def transformer(n_layer: int = 48, d_model: int = 2048, n_head: int = 16, seq: int = 2048,
                vocab: int = 50304, mlp_ratio: int = 4, flops: float = 15e12,
                efficiency: float = 0.5, dtype_bytes: int = 2, tp_max: int = 64) -> Workload:
    """A GPT-style decoder (embedding, `n_layer` blocks, final norm and head) on devices of
    `flops` peak FLOP/s reaching `efficiency` of it; activations of `dtype_bytes`.

    Per block and sample: 24 d^2 s + 4 d s^2 forward FLOPs (all split by tp), backward
    twice that; parameters 12 d^2 (split) + 4 d (replicated), in 12 tensors (qkv, the
    projections and the MLP's with their biases, two norms; 8 in tensor-parallel
    modules); saved activations
    s d (10 + 24 / t) + 5 a s^2 / t bytes at 2-byte activations (Korthikanti et al.,
    scaled by `dtype_bytes` / 2); two all-reduces of s d bytes forward and two backward
    (Megatron's f and g operators).
    """
    d, s, a, V, r = d_model, seq, n_head, vocab, mlp_ratio
    rate = flops * efficiency
    e = dtype_bytes
    act = s * d * e
    k = e / 2
    block_f = (2 * s * (4 + 2 * r) * d * d + 4 * d * s * s) / rate
    blocks = []
    for i in range(n_layer):
        name = f"blocks.{i}"
        blocks.append(Layer(
            name, name, Split(10 * s * d / rate, block_f), Split(20 * s * d / rate, 2 * block_f),
            Split(4 * d * e * 2, ((4 + 2 * r) * d * d + r * d) * e),
            Split(10 * s * d * k, (24 * s * d + 5 * a * s * s) * k), act, act,
            collectives=(Collective("allreduce", "forward", act, f"{name}.attn.proj"),
                         Collective("allreduce", "forward", act, f"{name}.mlp.proj"),
                         Collective("allreduce", "backward", act, f"{name}.attn.qkv"),
                         Collective("allreduce", "backward", act, f"{name}.mlp.fc")),
            modules=(name,), tensors=12, tp_tensors=8))
    emb = Layer("embed", None, Split(2 * s * d / rate, 0.0), Split(2 * s * d / rate, 0.0),
                Split((V + s) * d * e, 0.0), Split(s * 8, 0.0), act, 0.0,
                modules=("tok", "pos"), tensors=2)
    head_f = 2 * s * d * V / rate
    head = Layer("head", "ln_f", Split(5 * s * d / rate, head_f), Split(5 * s * d / rate,
                 2 * head_f), Split(2 * d * e, V * d * e), Split(2 * s * d * e, 2 * s * V * e),
                 s * V * e, act,
                 collectives=(Collective("all_gather", "forward", s * V * e, "head"),),
                 modules=("ln_f", "head"), tensors=3, tp_tensors=1)
    degrees = divisors_upto([n_head, d, r * d, V], tp_max)
    return Workload([emb, *blocks, head], f"transformer-{n_layer}x{d_model}", s * 8, e,
                    max(degrees), degrees,
                    {"source": "analytic", "n_layer": n_layer, "d_model": d_model,
                     "n_head": n_head, "seq": seq, "vocab": vocab, "flops": flops,
                     "efficiency": efficiency})


def parse_transformer(spec: str) -> Workload:
    """`transformer:n_layer=48,d_model=2048,...` (any keyword of `transformer`)."""
    _, _, body = spec.partition(":")
    kw: dict = {}
    for part in filter(None, body.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise PlanError(f"model {spec!r}: {part!r} is not key=value")
        if key not in transformer.__code__.co_varnames[:transformer.__code__.co_argcount]:
            raise PlanError(f"model {spec!r}: unknown key {key!r}")
        try:
            kw[key] = float(value) if key in ("flops", "efficiency") else int(value)
        except ValueError:
            raise PlanError(f"model {spec!r}: {key}={value!r} is not a number") from None
    return transformer(**kw)
