"""Measure a model's `Workload`: per-layer times, bytes and tensor-parallel collectives.

    wl = profile_workload(gpt.model(), gpt.example_input, micro_batch=8, rules=plan.tensor_parallel)

Layers are the model's pipeline units: its top-level children in call order, with the
largest `nn.ModuleList` / `nn.Sequential` (a transformer's blocks, at any depth: its
ancestors' other children are units too) expanded, so a
pipeline stage may start at any block or at the first module after them (the units
before the blocks form the first layer). Every unit is timed inside whole forward +
backward passes (hooks: a unit's forward from its pre- to its post-hook; its backward
from the moment its output's gradient is ready until the previous unit's is), median of
`repeats` after a warm-up, at two micro-batch sizes (b and 2b: a fixed cost per call plus
a cost per sample) and once more at 2b on the model as one tensor-parallel rank of
degree 2 holds it (each `colwise` / `rowwise` `nn.Linear` narrowed, `divide` attributes
halved), which separates the per-sample costs into a replicated part and a part split by
tp. Saved activations are the distinct non-parameter tensors autograd keeps (saved-tensor
hooks), attributed to the unit running. Parameter bytes come from the plan's layout
(`weft.plan.check.layout`), exact. The collectives follow torch's ParallelStyles:
a rowwise module all-reduces its output in the forward (reduce-scatter with a sharded
output layout), a colwise one all-reduces its input's gradient in the backward (an
all-gather of the output when its output layout is replicate), a row-wise embedding
all-reduces its output; bytes per sample from hooks on the unsplit model.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from weft.errors import PlanError
from weft.parallel.exported import kept_modules
from weft.parallel.split import ancestors
from weft.planner.profile import backward_ones
from weft.plan.check import layout, matching, tp_styles
from weft.plan.format import Mesh, Plan, TPRule
from weft.planner.workload import Collective, Layer, Split, Workload, divisors_upto


def _nbytes(t) -> float:
    return float(t.numel() * t.element_size()) if torch.is_tensor(t) else 0.0


def unit_modules(model: nn.Module) -> tuple[str | None, list[tuple[str, nn.Module]]]:
    """(name of the expanded container or None, [(unit name, module)]) in registration order.
    The container is the largest `nn.ModuleList` / `nn.Sequential` at any depth (a Hugging
    Face model's `transformer.h` or `model.layers`); the units are its children and the
    children of its ancestors, as `weft.parallel.split` keeps them whole when it cuts there."""
    if isinstance(model, (nn.Sequential, nn.ModuleList)):
        return "", [(n, m) for n, m in model.named_children()]
    containers = [(n, m) for n, m in model.named_modules()
                  if n and isinstance(m, (nn.ModuleList, nn.Sequential))]
    big = max(containers, key=lambda c: sum(p.numel() for p in c[1].parameters()),
              default=(None, None))[0]
    if big is None:
        return None, list(model.named_children())
    mods = dict(model.named_modules())
    return big, [(q, mods[q]) for q in kept_modules(model, ancestors([big]) | {big})]


def local_model(model: nn.Module, rules: tuple[TPRule, ...], tp: int) -> nn.Module:
    """A copy of `model` shaped as one tensor-parallel rank of degree `tp` holds it."""
    local = copy.deepcopy(model)
    plan = Plan(mesh=Mesh(tp=tp), tensor_parallel=tuple(rules))
    modules = dict(local.named_modules())
    for name, (_, rule) in tp_styles(plan, local).items():
        mod = modules[name]
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else local
        if isinstance(mod, nn.Linear) and rule.style in ("colwise", "rowwise"):
            i, o = mod.in_features, mod.out_features
            i, o = (i, o // tp) if rule.style == "colwise" else (i // tp, o)
            setattr(parent, child, nn.Linear(i, o, bias=mod.bias is not None))
        elif isinstance(mod, nn.Embedding) and rule.style == "colwise":
            setattr(parent, child, nn.Embedding(mod.num_embeddings, mod.embedding_dim // tp))
    for rule in rules:
        for name in matching(rule.module, local):
            m = dict(local.named_modules())[name]
            for attr in rule.divide:
                setattr(m, attr, getattr(m, attr) // tp)
    return local


class _Probe:
    """Hooks timing every unit's forward and backward and counting what it saves."""

    def __init__(self, units: list[tuple[str, nn.Module]], params: set[int]):
        self.units, self.params = units, params
        self.handles = []
        self.current: list[str] = []
        for name, mod in units:
            self.handles.append(mod.register_forward_pre_hook(self._pre(name)))
            self.handles.append(mod.register_forward_hook(self._post(name)))

    def reset(self):
        self.fwd: dict[str, float] = {}
        self.bwd_start: dict[str, float] = {}
        self.saved: dict[str, float] = {}
        self.seen: set = set()
        self.out: dict[str, float] = {}
        self.inp: dict[str, float] = {}
        self.order: list[str] = []
        self.t0: dict[str, float] = {}

    def _pre(self, name):
        def hook(mod, args):
            self.current.append(name)
            self.order.append(name)
            self.inp[name] = sum(_nbytes(a) for a in args)
            self.t0[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(mod, args, out):
            self.fwd[name] = self.fwd.get(name, 0.0) + time.perf_counter() - self.t0[name]
            self.current.pop()
            self.out[name] = _nbytes(out)
            if torch.is_tensor(out) and out.requires_grad:
                out.register_hook(self._grad(name))
        return hook

    def _grad(self, name):
        def hook(g):
            self.bwd_start.setdefault(name, time.perf_counter())
        return hook

    def pack(self, t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key[0] not in self.params and key not in self.seen and t.device.type != "meta":
            self.seen.add(key)
            unit = self.current[-1] if self.current else "_gap"
            self.saved[unit] = self.saved.get(unit, 0.0) + key[1]
        return t

    def remove(self):
        for h in self.handles:
            h.remove()


def measure_units(model: nn.Module, sample, repeats: int = 5, statistic: str = "median") -> dict:
    """Per unit (call order): forward and backward seconds (`statistic` over the repeats:
    'median' or 'min'), saved, input and output bytes, for one forward + backward of
    `model` on `sample`."""
    pick = {"median": statistics.median, "min": min}.get(statistic)
    if pick is None:
        raise PlanError(f"statistic must be 'median' or 'min', got {statistic!r}")
    _, units = unit_modules(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    probe = _Probe(units, params)
    inputs = sample if isinstance(sample, tuple) else (sample,)
    runs = []
    try:
        for rep in range(repeats + 1):
            probe.reset()
            with torch.autograd.graph.saved_tensors_hooks(probe.pack, lambda t: t):
                out = model(*inputs)
            t_b = time.perf_counter()
            backward_ones(out, type(model).__name__)
            t_end = time.perf_counter()
            order = [n for i, n in enumerate(probe.order) if n not in probe.order[:i]]
            starts = [probe.bwd_start.get(n) for n in order]
            bwd = {}
            for k, n in enumerate(order):  # backward of unit k ends when unit k-1's starts
                if starts[k] is None:
                    bwd[n] = 0.0
                    continue
                later = [s for s in starts[:k] if s is not None and s >= starts[k]]
                end = min(later) if later else t_end
                bwd[n] = max(end - starts[k], 0.0)
            if rep:
                runs.append((order, dict(probe.fwd), bwd, t_b))
            model.zero_grad(set_to_none=True)
    finally:
        probe.remove()
    order = runs[0][0]
    fwd = {n: pick([r[1].get(n, 0.0) for r in runs]) for n in order}
    bwd = {n: pick([r[2].get(n, 0.0) for r in runs]) for n in order}
    saved = dict(probe.saved)
    if "_gap" in saved and order:  # ops between units: charged to the last unit
        saved[order[-1]] = saved.get(order[-1], 0.0) + saved.pop("_gap")
    return {"order": order, "forward": fwd, "backward": bwd, "saved": saved,
            "out": dict(probe.out), "in": dict(probe.inp)}


def _style_bytes(model: nn.Module, rules, sample) -> dict[str, tuple[float, float]]:
    """{module: (input bytes, output bytes)} of every module a rule gives a style."""
    plan = Plan(mesh=Mesh(tp=2), tensor_parallel=tuple(rules))
    mods = dict(model.named_modules())
    found, handles = {}, []
    for name in tp_styles(plan, model):
        def hook(mod, args, out, name=name):
            found[name] = (sum(_nbytes(a) for a in args), _nbytes(out))
        handles.append(mods[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*(sample if isinstance(sample, tuple) else (sample,)))
    finally:
        for h in handles:
            h.remove()
    return found


def collectives_of(rule: TPRule, module: nn.Module, in_b: float, out_b: float,
                   name: str) -> list[Collective]:
    """The collectives torch's ParallelStyle for `rule` runs (bytes for the whole batch)."""
    out_l = (rule.output_layouts or ("",))[0]
    in_l = (rule.input_layouts or ("",))[0]
    if rule.style == "rowwise":
        kind = "reduce_scatter" if out_l.startswith("shard") else "allreduce"
        return [Collective(kind, "forward", out_b, name)]
    if rule.style == "colwise" and isinstance(module, nn.Linear):
        out = []
        if in_l.startswith("shard"):
            out += [Collective("all_gather", "forward", in_b, name),
                    Collective("reduce_scatter", "backward", in_b, name)]
        else:
            out.append(Collective("allreduce", "backward", in_b, name))
        if out_l == "replicate":
            out.append(Collective("all_gather", "forward", out_b, name))
        return out
    if rule.style == "prepare_input" and rule.input_layouts and \
            rule.input_layouts[0].startswith("shard"):
        return [Collective("all_gather", "forward", in_b, name),
                Collective("reduce_scatter", "backward", in_b, name)]
    return []


def _fit(t1: float, t2: float, b: int) -> tuple[float, float]:
    """(fixed, per sample) from times at micro-batches b and 2b."""
    per = max((t2 - t1) / b, 0.0)
    fixed = t1 - b * per
    if fixed < 0:
        fixed, per = 0.0, t2 / (2 * b)
    return fixed, per


def _split(whole: float, local: float, tp: int = 2) -> Split:
    """Split a per-sample cost `whole` at tp=1 with `local` at tp=2 into rep + split / t."""
    split = min(max((whole - local) * tp / (tp - 1), 0.0), whole)
    return Split(whole - split, split)


def profile_workload(model: nn.Module, example_input, micro_batch: int = 8,
                     rules: tuple[TPRule, ...] = (), repeats: int = 5,
                     threads: int | None = 1, name: str | None = None,
                     statistic: str = "median") -> Workload:
    """The `Workload` of `model` (see the module doc). `example_input(b)` makes a batch of b
    samples; `rules`: the tensor-parallel rules plans will use (none: tp 1 only);
    `statistic`: 'median' of the repeats, or 'min' (the uncontended time on a shared
    machine; the contention is then a separate `compute_scale`)."""
    b = int(micro_batch)
    if b < 1:
        raise PlanError(f"micro_batch must be >= 1, got {micro_batch!r}")
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        x1, x2 = example_input(b), example_input(2 * b)
        big, _ = unit_modules(model)
        try:
            m1 = measure_units(model, x1, repeats, statistic)
        except PlanError:
            raise
        except Exception as e:  # the model's own error, named as such (not a weft crash)
            raise PlanError(f"profiling {name or type(model).__name__}: its forward and "
                            f"backward on the example input of {b} fail: "
                            f"{type(e).__name__}: {e}") from e
        m2 = measure_units(model, x2, repeats, statistic)
        tp_ok = bool(rules) and any(r.style for r in rules)
        values = []
        if tp_ok:
            plan = Plan(mesh=Mesh(tp=2), tensor_parallel=tuple(rules))
            mods = dict(model.named_modules())
            for mname, (_, rule) in tp_styles(plan, model).items():
                mod = mods[mname]
                if isinstance(mod, nn.Linear) and rule.style in ("colwise", "rowwise"):
                    values.append(mod.out_features if rule.style == "colwise" else mod.in_features)
                elif isinstance(mod, nn.Embedding) and rule.style in ("colwise", "rowwise"):
                    values.append(mod.embedding_dim if rule.style == "colwise"
                                  else mod.num_embeddings)
            for rule in rules:
                for mname in matching(rule.module, model):
                    values += [int(getattr(mods[mname], a)) for a in rule.divide]
            degrees = divisors_upto(values, 64)
            tp_ok = 2 in degrees
        mloc = measure_units(local_model(model, rules, 2), x2, repeats, statistic) if tp_ok \
            else m2
        style_io = _style_bytes(model, rules, x1) if tp_ok else {}
        styles = tp_styles(Plan(mesh=Mesh(tp=2), tensor_parallel=tuple(rules)), model) \
            if tp_ok else {}
        lay = layout(Plan(mesh=Mesh(tp=2), tensor_parallel=tuple(rules)), model) if tp_ok else \
            layout(Plan(), model)
    finally:
        torch.set_num_threads(old)
    order = m1["order"]
    groups = _group(order, big)
    mods = dict(model.named_modules())
    sizes = {n: p.element_size() for n, p in model.named_parameters()}
    layers = []
    for gi, (lname, split_at, members) in enumerate(groups):
        def tot(m, key, members=members):
            return sum(m[key].get(u, 0.0) for u in members)
        f_fix, f_per = _fit(tot(m1, "forward"), tot(m2, "forward"), b)
        b_fix, b_per = _fit(tot(m1, "backward"), tot(m2, "backward"), b)
        f_loc = max(tot(mloc, "forward") - f_fix, 0.0) / (2 * b)
        b_loc = max(tot(mloc, "backward") - b_fix, 0.0) / (2 * b)
        saved2 = tot(m2, "saved") / (2 * b)
        saved_loc = tot(mloc, "saved") / (2 * b)
        rep_p = split_p = 0.0
        n_tensors = n_tp = 0
        for p in lay:
            if any(p.name == u or p.name.startswith(u + ".") for u in members):
                n = 1
                for s in p.shape:
                    n *= s
                nb = n * sizes.get(p.name, 4)
                n_tensors += 1
                n_tp += p.tp_style is not None  # a DTensor, split or not (a rowwise bias)
                if p.tp_dim is not None:
                    split_p += nb
                else:
                    rep_p += nb
        colls = []
        for mname, (_, rule) in styles.items():
            if any(mname == u or mname.startswith(u + ".") for u in members):
                i_b, o_b = style_io.get(mname, (0.0, 0.0))
                colls += collectives_of(rule, mods[mname], i_b / b, o_b / b, mname)
        layers.append(Layer(
            lname, split_at if gi > 0 else None, _split(f_per, f_loc), _split(b_per, b_loc),
            Split(rep_p, split_p), _split(saved2, saved_loc),
            m2["out"].get(members[-1], 0.0) / (2 * b), m2["in"].get(members[0], 0.0) / (2 * b),
            f_fix + b_fix, tuple(colls), tuple(members), n_tensors, n_tp))
    degrees = divisors_upto(values, 64) if tp_ok else (1,)
    x_in = x1 if isinstance(x1, tuple) else (x1,)
    return Workload(layers, name or type(model).__name__, sum(_nbytes(t) for t in x_in) / b, 4,
                    max(degrees), degrees,
                    {"source": "profile", "micro_batch": b, "repeats": repeats,
                     "torch": torch.__version__, "threads": threads})


def _group(order: list[str], big: str | None) -> list[tuple[str, str | None, list[str]]]:
    """(layer name, module a stage starting here is cut at, units) in call order."""
    if big in (None, ""):
        return [(u, u, [u]) for u in order]
    inside = [u for u in order if u.startswith(big + ".")]
    if not inside:
        return [(u, u, [u]) for u in order]
    first, last = order.index(inside[0]), order.index(inside[-1])
    out = []
    if first > 0:
        out.append(("+".join(order[:first]), None, order[:first]))
    out += [(u, u, [u]) for u in order[first:last + 1]]
    if last + 1 < len(order):
        rest = order[last + 1:]
        out.append(("+".join(rest), rest[0], rest))
    return out
