"""The pipeline plan: stages (layer ranges), their replication and ranks, as JSON.

The data the runtime (`weft.parallel.pipeline.runtime`) executes and the planner
(`weft.planner`) writes.

Format ``weft.pipeline-plan/1`` (documented in docs/pipeline.md)::

    {"format": "weft.pipeline-plan/1", "method": "optimal",
     "model": "/abs/path/examples/mlp_digits.py:model", "model_hash": "3f2a...",
     "trace": "auto", "output": null,
     "topology": "dgx1", "workers": 4, "micro_batch": 16, "microbatches": 8,
     "num_layers": 7, "layer_names": [...],
     "stages": [{"layers": [0, 3], "replicas": 1, "ranks": [0], "devices": ["gpu0"],
                 "time_s": 0.01, "memory_bytes": 123.0}, ...],
     "bottleneck_s": 0.01, "predicted_samples_per_s": 12800.0}

``layers`` is a half-open range [first, end). Every rank 0..W-1 is in exactly
one stage; stage s's replicas are its ``ranks`` in order (micro-batch mb runs on
replica ``mb % replicas``). The flat partitioner gives consecutive ranks; the
hierarchical one interleaves a stage replicated across hosts host by host.

Instead of layer ranges a plan may name where stages start, ``"split_points":
["blocks.4", "blocks.8"]`` (module names; stages then default to one rank each, or give
``"stages": [{"ranks": [0]}, ...]`` without ``layers``): such a plan is resolved against
the model's layers (`resolve`) when it is built. ``model`` is recorded absolute, with the
file's content hash (`weft.model_spec.fingerprint`); `load` warns (`ModelChangedWarning`)
when the file changed since planning, and finds a relative ``model`` of an older plan
next to the plan file when it is not found from the working directory.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from weft.errors import PlanError

FORMAT = "weft.pipeline-plan/1"


class ModelChangedWarning(UserWarning):
    """The model file changed since the plan was made (its content hash differs)."""


@dataclass
class Stage:
    layers: tuple[int, int] | None  # None until a plan given by split points is resolved
    ranks: list[int]
    devices: list[str] = field(default_factory=list)
    time_s: float = 0.0
    memory_bytes: float = 0.0

    @property
    def replicas(self) -> int:
        return len(self.ranks)

    @property
    def first(self) -> int:
        return self.layers[0]

    @property
    def end(self) -> int:
        return self.layers[1]


@dataclass
class PipelinePlan:
    stages: list[Stage]
    num_layers: int
    micro_batch: int = 1
    microbatches: int = 1
    method: str = "optimal"
    model: str | None = None
    topology: str | None = None
    layer_names: list[str] = field(default_factory=list)
    bottleneck_s: float = 0.0
    predicted_samples_per_s: float = 0.0
    extra: dict = field(default_factory=dict)
    model_hash: str | None = None
    trace: str = "auto"  # how the model was cut into layers (see layers.as_sequential)
    output: str | None = None  # the field of a structured model output the loss uses
    split_points: list[str] = field(default_factory=list)

    @property
    def resolved(self) -> bool:
        """Whether every stage has its layer range (plans given by split points need
        `resolve`)."""
        return all(st.layers is not None for st in self.stages)

    def resolve(self, layers) -> "PipelinePlan":
        """Set the stages' layer ranges from `split_points` and the model's layers (an
        `as_sequential` result or its `layer_modules`); a resolved plan is returned as is."""
        if self.resolved:
            return self
        from weft.parallel.pipeline.layers import layer_modules, split_bounds

        mods = layer_modules(layers) if hasattr(layers, "named_children") else list(layers)
        bounds = split_bounds(mods, self.split_points)
        for st, b in zip(self.stages, bounds):
            st.layers = b
        self.num_layers = len(mods)
        if hasattr(layers, "named_children"):
            self.layer_names = [n for n, _ in layers.named_children()]
        return self.validate()

    def _need_layers(self) -> None:
        if not self.resolved:
            raise PlanError(f"plan gives split points {self.split_points} but no layer ranges "
                            "yet: resolve it against the model first (PipelinePlan.resolve)")

    def model_changed(self) -> str | None:
        """A message if the plan's model file is not the one planned (its hash differs)."""
        from weft.model_spec import fingerprint

        if not self.model or not self.model_hash:
            return None
        now = fingerprint(self.model)
        if now is None or now == self.model_hash:
            return None
        return (f"model file of {self.model} changed since this plan was made (content hash "
                f"{now}, planned {self.model_hash}); if its layers changed, plan again")

    @property
    def workers(self) -> int:
        return sum(s.replicas for s in self.stages)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def stage_of_rank(self, rank: int) -> tuple[int, int]:
        """(stage index, replica index) of `rank`."""
        for s, st in enumerate(self.stages):
            if rank in st.ranks:
                return s, st.ranks.index(rank)
        raise PlanError(f"rank {rank} is not in the plan (it has {self.workers} ranks)")

    def boundaries(self) -> list[tuple[int, int]]:
        self._need_layers()
        return [s.layers for s in self.stages]

    def chunk_bounds(self, chunks_per_stage: int = 1) -> list[tuple[int, int]]:
        """The layer range of every model chunk: the stages' own, or for an interleaved
        schedule (v > 1 chunks per stage) S*v equal chunks, chunk c on stage c % S."""
        if chunks_per_stage > 1:
            self._need_layers()
            return equal_bounds(self.num_layers, self.num_stages * chunks_per_stage)
        return self.boundaries()

    def validate(self) -> "PipelinePlan":
        if not self.stages:
            raise PlanError("plan has no stages")
        given = [st.layers is not None for st in self.stages]
        if not all(given):
            if any(given) or not self.split_points:
                raise PlanError("every stage needs its layers [first, end), or the plan gives "
                                "split_points and no stage gives layers")
            if len(self.stages) != len(self.split_points) + 1:
                raise PlanError(f"{len(self.split_points)} split points make "
                                f"{len(self.split_points) + 1} stages, but the plan has "
                                f"{len(self.stages)}")
        pos, seen = 0, set()
        for s, st in enumerate(self.stages):
            if st.layers is not None:
                a, b = st.layers
                if a != pos or b <= a:
                    raise PlanError(f"stage {s}: layers {list(st.layers)} must start at {pos} "
                                    "and be non-empty (stages cover the layers in order)")
                pos = b
            if not st.ranks or len(set(st.ranks)) != len(st.ranks) or seen & set(st.ranks):
                raise PlanError(f"stage {s}: ranks {st.ranks} must be non-empty and used by no "
                                "other stage")
            seen |= set(st.ranks)
        if seen != set(range(len(seen))):
            raise PlanError(f"ranks {sorted(seen)} must be 0..{len(seen) - 1}, each in one stage")
        if all(given) and pos != self.num_layers:
            raise PlanError(f"stages cover layers [0, {pos}) but the model has "
                            f"{self.num_layers} layers")
        return self

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "method": self.method, "model": self.model,
             "topology": self.topology, "workers": self.workers, "micro_batch": self.micro_batch,
             "microbatches": self.microbatches, "num_layers": self.num_layers,
             "layer_names": self.layer_names, "bottleneck_s": self.bottleneck_s,
             "predicted_samples_per_s": self.predicted_samples_per_s, "extra": self.extra,
             "model_hash": self.model_hash, "trace": self.trace, "output": self.output,
             "stages": []}
        if self.split_points:
            d["split_points"] = list(self.split_points)
        for st in self.stages:
            e = asdict(st)
            if st.layers is None:
                del e["layers"]
            else:
                e["layers"] = list(st.layers)
            e["replicas"] = st.replicas
            d["stages"].append(e)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "PipelinePlan":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise PlanError(f"{source}: not a weft pipeline plan (field 'format' must be "
                            f"{FORMAT!r}, got {d.get('format') if isinstance(d, dict) else d!r})")
        split = d.get("split_points") or []
        if not isinstance(split, list) or not all(isinstance(p, str) and p for p in split):
            raise PlanError(f"{source}: split_points must be a list of module names, got "
                            f"{split!r}")
        entries = d.get("stages")
        if entries is None and split:  # one rank per stage
            entries = [{"ranks": [s]} for s in range(len(split) + 1)]
        stages = []
        for s, e in enumerate(entries or []):
            try:
                layers = None if split and "layers" not in e else \
                    tuple(int(v) for v in e["layers"])
                ranks = [int(r) for r in e["ranks"]]
            except (KeyError, TypeError, ValueError) as exc:
                raise PlanError(f"{source}: stages[{s}]: bad or missing field ({exc})") from None
            if layers is not None and len(layers) != 2:
                raise PlanError(f"{source}: stages[{s}].layers must be [first, end], got {layers}")
            if "replicas" in e and int(e["replicas"]) != len(ranks):
                raise PlanError(f"{source}: stages[{s}]: replicas={e['replicas']} but "
                                f"{len(ranks)} ranks")
            stages.append(Stage(layers, ranks, list(e.get("devices", [])),
                                float(e.get("time_s", 0)), float(e.get("memory_bytes", 0))))
        micro_batch, microbatches = (_count(d, k, source) for k in ("micro_batch", "microbatches"))
        try:
            num_layers = int(d["num_layers"]) if not split or "num_layers" in d else 0
            plan = cls(stages, num_layers, micro_batch, microbatches,
                       d.get("method", "split points" if split else "optimal"), d.get("model"),
                       d.get("topology"), list(d.get("layer_names", [])),
                       float(d.get("bottleneck_s", 0)), float(d.get("predicted_samples_per_s", 0)),
                       dict(d.get("extra") or {}), d.get("model_hash"),
                       str(d.get("trace") or "auto"), d.get("output"), list(split))
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"{source}: bad or missing field ({exc})") from None
        try:
            plan.validate()
        except PlanError as exc:
            raise PlanError(f"{source}: {exc}") from None
        if "workers" in d and _count(d, "workers", source) != plan.workers:
            raise PlanError(f"{source}: workers: {d['workers']} but the stages use "
                            f"{plan.workers} ranks")
        return plan

    def save(self, path: str | os.PathLike) -> Path:
        from weft.atomic import write_text

        return write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PipelinePlan":
        """Read a plan; a relative model file not found from here is looked up next to the
        plan file, and a `ModelChangedWarning` is issued if the model file changed."""
        from weft.files import read_json

        plan = cls.from_dict(read_json(path, PlanError, "plan"), str(path))
        plan.model = _locate(plan.model, Path(path).resolve().parent)
        msg = plan.model_changed()
        if msg:
            warnings.warn(f"{path}: {msg}", ModelChangedWarning, stacklevel=2)
        return plan


def _count(d: dict, key: str, source: str) -> int:
    """A plan field that counts something: an integer >= 1 (1 when absent)."""
    v = d.get(key, 1)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise PlanError(f"{source}: {key}: must be an integer >= 1, got {v!r}")
    return v


def _locate(spec: str | None, folder: Path) -> str | None:
    """`spec` with a relative file that is missing here but present in `folder` made
    absolute (plans written before specs were recorded absolute)."""
    if not spec:
        return spec
    target, sep, attr = spec.partition(":")
    if not (target.endswith(".py") or "/" in target) or Path(target).is_absolute() \
            or Path(target).expanduser().exists():
        return spec
    there = folder / target
    return f"{there}{sep}{attr}" if there.is_file() else spec


def from_boundaries(bounds: list[tuple[int, int]], replicas: list[int] | None = None,
                    num_layers: int | None = None, **kw) -> PipelinePlan:
    """A plan from layer ranges (and replica counts), ranks assigned consecutively."""
    replicas = replicas or [1] * len(bounds)
    stages, rank = [], 0
    for (a, b), r in zip(bounds, replicas):
        stages.append(Stage((a, b), list(range(rank, rank + r))))
        rank += r
    return PipelinePlan(stages, num_layers if num_layers is not None else bounds[-1][1],
                        **kw).validate()


def equal_bounds(num_layers: int, stages: int) -> list[tuple[int, int]]:
    """`stages` contiguous layer ranges of [0, num_layers) with (about) equal layer counts."""
    edges = np.linspace(0, num_layers, stages + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
