"""Check a plan against a model and a world size, before any process group traffic.

`check(plan, model, world)` resolves the mesh and raises `PlanError` naming the
field and value for: degrees that do not multiply to the world size, a pattern
that matches no module, a style on a module it cannot shard, a tp degree that does
not divide the sharded dimension (or a divided attribute), a split point that is
not a module name, and (where the device memory is known) a plan needing more
memory per rank than a device has. `layout(plan, model)` says how every
parameter is split (tp dim, fsdp sharding, pipeline stage); `describe` builds on it.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

from torch import nn

from weft.errors import PlanError
from weft.plan.format import Plan

BYTES_PER_PARAM_STATE = 4  # parameter, gradient and Adam's two moments, each one element


def match(pattern: str, name: str) -> bool:
    """fnmatch per dotted atom: '*' stays inside one atom; a '**' atom matches any depth."""
    return _match(pattern.split("."), name.split(".") if name else [])


def _match(pat: list[str], atoms: list[str]) -> bool:
    if not pat:
        return not atoms
    if pat[0] == "**":
        return any(_match(pat[1:], atoms[i:]) for i in range(len(atoms) + 1))
    return bool(atoms) and fnmatch.fnmatchcase(atoms[0], pat[0]) and _match(pat[1:], atoms[1:])


def matching(pattern: str, model: nn.Module) -> list[str]:
    """Names of the model's modules (not the root) matched by `pattern`, in registration order."""
    return [n for n, _ in model.named_modules() if n and match(pattern, n)]


def _no_match(where: str, pattern: str, model: nn.Module) -> PlanError:
    names = [n for n, _ in model.named_modules() if n]
    near = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
    hint = f"; did you mean {near}?" if near else f"; module names look like {names[:4]}"
    return PlanError(f"{where}: {pattern!r} matches no module of {type(model).__name__}{hint}")


# How each style shards a module's weights: {param name: dim} for (style, module type).
_SHARD_DIMS = {
    ("colwise", nn.Linear): ({"weight": 0, "bias": 0}, "out_features"),
    ("rowwise", nn.Linear): ({"weight": 1}, "in_features"),
    ("colwise", nn.Embedding): ({"weight": 1}, "embedding_dim"),
    ("rowwise", nn.Embedding): ({"weight": 0}, "num_embeddings"),
}


@dataclass(frozen=True)
class ParamLayout:
    """Where one parameter lives: its tp shard dim (None: whole on every tp rank), whether
    fully_shard splits it over dp_shard, and its pipeline stage (None: chosen by the planner)."""

    name: str
    shape: tuple[int, ...]
    tp_dim: int | None
    tp_style: str | None
    fsdp: bool
    stage: int | None


def tp_styles(plan: Plan, model: nn.Module, strict: bool = True) -> dict[str, tuple[int, object]]:
    """{module name: (rule index, rule)} for rules with a style; errors on overlap, and (strict)
    on a rule that matches no module (not strict: a pipeline stage holds part of the model)."""
    out: dict[str, tuple[int, object]] = {}
    for i, rule in enumerate(plan.tensor_parallel):
        names = matching(rule.module, model)
        if not names and strict:
            raise _no_match(f"tensor_parallel[{i}].module", rule.module, model)
        if rule.style is None:
            continue
        for n in names:
            if n in out:
                raise PlanError(f"tensor_parallel[{i}].module: {rule.module!r} gives module {n!r} "
                                f"a second style (tensor_parallel[{out[n][0]}] already did)")
            out[n] = (i, rule)
    return out


def check(plan: Plan, model: nn.Module, world: int, device_memory: float | None = None,
          source: str | None = None) -> Plan:
    """The plan resolved for `world` ranks, checked against `model` (see the module docstring).
    `source` (e.g. the plan's file name) starts every error message when given."""
    try:
        return _check(plan.resolve(world, source), model, device_memory)
    except PlanError as exc:
        if source and not str(exc).startswith(f"{source}: "):
            raise PlanError(f"{source}: {exc}") from None
        raise


def _check_communicator(plan: Plan) -> None:
    """weft's data-parallel communicator on a named topology: its groups run over the
    placement's devices (all of them in the topology), or without a placement over the
    topology's compute devices in order (as many as a group has ranks), as
    `weft.parallel.apply` makes it; checked here so that no rank starts to find out."""
    dp, mesh = plan.data_parallel, plan.mesh
    if (dp.communicator != "weft" or dp.topology == "auto" or mesh.dp_replicate < 2
            or mesh.dp_shard > 1 or dp.flavour(mesh) != "weft"):
        return
    from weft.errors import WeftError
    from weft.topology.io import resolve

    try:
        names = [d.name for d in resolve(dp.topology).compute_devices]
    except WeftError as exc:
        raise PlanError(f"data_parallel.topology: {exc}") from None
    if plan.placement:
        missing = [(r, d) for r, d in enumerate(plan.placement) if d not in names]
        if missing:
            r, d = missing[0]
            raise PlanError(f"placement[{r}]: {d!r} is not a compute device of "
                            f"data_parallel.topology {dp.topology!r} ({_listed(names)}), on "
                            "which weft's communicator runs the rank's data-parallel group")
    elif len(names) != mesh.dp_replicate:
        raise PlanError(f"data_parallel.topology: {dp.topology!r} has {len(names)} compute "
                        f"devices but a data-parallel group has {mesh.dp_replicate} ranks; "
                        "give the plan a placement (the device of every rank), or a topology "
                        "of one data-parallel group")


def _listed(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")


def _check(plan: Plan, model: nn.Module, device_memory: float | None) -> Plan:
    tp = plan.mesh.tp
    modules = dict(model.named_modules())
    styles = tp_styles(plan, model)
    for name, (i, rule) in styles.items():
        mod, where = modules[name], f"tensor_parallel[{i}]"
        if rule.style in ("colwise", "rowwise"):
            key = next((k for k in _SHARD_DIMS if k[0] == rule.style and isinstance(mod, k[1])), None)
            if key is None:
                raise PlanError(f"{where}.style: {rule.style!r} shards nn.Linear or nn.Embedding; "
                                f"{name!r} is {type(mod).__name__}")
            attr = _SHARD_DIMS[key][1]
            size = getattr(mod, attr)
            if size % tp:
                raise PlanError(f"{where}: mesh.tp={tp} does not divide {name}.{attr}={size} "
                                f"({rule.style} splits it)")
    if tp > 1:
        _check_ties(model, styles, modules)
    if plan.mesh.pp == 1 and (plan.mesh.dp_shard > 1 or plan.data_parallel.flavour(plan.mesh)
                              == "fsdp"):
        shard_units(plan, model)  # tied weights across fully_shard units
    for i, rule in enumerate(plan.tensor_parallel):
        for a, attr in enumerate(rule.divide):
            for name in matching(rule.module, model):
                v = getattr(modules[name], attr, None)
                if not isinstance(v, int) or isinstance(v, bool):
                    raise PlanError(f"tensor_parallel[{i}].divide[{a}]: module {name!r} has no "
                                    f"integer attribute {attr!r} (got {v!r})")
                if v % tp:
                    raise PlanError(f"tensor_parallel[{i}].divide[{a}]: mesh.tp={tp} does not "
                                    f"divide {name}.{attr}={v}")
    for field, patterns in (("data_parallel.shard_modules", plan.data_parallel.shard_modules),
                            ("activation_checkpoint", plan.activation_checkpoint)):
        for i, pat in enumerate(patterns):
            if not matching(pat, model):
                raise _no_match(f"{field}[{i}]", pat, model)
    pipe = plan.pipeline
    if pipe is not None and pipe.split != "planner":
        order = [n for n in modules if n]
        last = -1
        for i, s in enumerate(pipe.split):
            if s not in modules or not s:
                raise _no_match(f"pipeline.split[{i}]", s, model)
            if order.index(s) <= last:
                raise PlanError(f"pipeline.split[{i}]: {s!r} comes before the previous split point "
                                "in the model's module order")
            last = order.index(s)
    _check_communicator(plan)
    if device_memory is not None:
        need = memory_per_rank(plan, model)
        if need > device_memory:
            raise PlanError(f"mesh: {_mesh_text(plan)} needs about {need / 2**30:.3g} GiB per rank "
                            f"(parameters, gradients and Adam state; activations not counted) but a "
                            f"device has {device_memory / 2**30:.3g} GiB")
    return plan


def ties(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names (model order) that are one tensor (tied weights)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def shard_units(plan: Plan, model: nn.Module) -> list[list[str]]:
    """The fully_shard calls for `model` (the whole model or one pipeline stage): each
    module matched by data_parallel.shard_modules alone, innermost first, except that units
    holding uses of one tied tensor are sharded together (one call; FSDP2 refuses a
    parameter in two groups). A PlanError if a tied tensor is used both inside a unit and
    outside every unit (the root would hold it too)."""
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    units = sorted({n for pat in plan.data_parallel.shard_modules for n in matching(pat, model)},
                   key=lambda n: (-n.count("."), order[n]))  # innermost first, model order
    group = {u: u for u in units}

    def unit_of(param: str) -> str:
        mod = param.rpartition(".")[0]
        return next((u for u in units if mod == u or mod.startswith(u + ".")), "")

    def root(u: str) -> str:
        while group[u] != u:
            u = group[u]
        return u
    for names in ties(model):
        at = {n: unit_of(n) for n in names}
        if len(set(at.values())) < 2:
            continue
        if "" in at.values():
            said = ", ".join(f"{n} in {u!r}" if u else f"{n} in no unit" for n, u in at.items())
            raise PlanError(f"data_parallel.shard_modules: {' and '.join(names)} are one tensor "
                            f"(tied weights) but fully_shard would get it twice ({said}); list "
                            "every module using it (weft shards them as one unit), or none")
        us = sorted({root(u) for u in at.values()})
        if any(a != b and b.startswith(a + ".") for a in us for b in us):
            raise PlanError(f"data_parallel.shard_modules: {' and '.join(names)} are one tensor "
                            f"(tied weights) used in nested units {us}; list the outer one only")
        for u in us[1:]:
            group[u] = us[0]
    out: dict[str, list[str]] = {}
    for u in units:
        out.setdefault(root(u), []).append(u)
    return list(out.values())


def _tp_split(style: str | None, module: nn.Module, pname: str) -> str:
    """How a tp style leaves one parameter: 'whole' (a plain tensor), 'replicate' or
    'shard(d)' (a DTensor)."""
    if style in ("colwise", "rowwise"):
        key = next((k for k in _SHARD_DIMS if k[0] == style and isinstance(module, k[1])), None)
        dim = _SHARD_DIMS[key][0].get(pname) if key else None
        return f"shard({dim})" if dim is not None else "replicate"
    if style in ("replicate", "sequence_parallel"):
        return "replicate"
    return "whole"


def _check_ties(model: nn.Module, styles: dict, modules: dict) -> None:
    """The uses of one tied tensor must come out of the tp rules split alike, to stay one
    tensor (`weft.parallel.tied.retie`)."""
    for names in ties(model):
        got = []
        for n in names:
            mod, _, pname = n.rpartition(".")
            rule = styles.get(mod, (None, None))[1]
            style = rule.style if rule is not None else None
            got.append((n, style, _tp_split(style, modules[mod], pname)))
        if len({s for *_, s in got}) > 1:
            said = "; ".join(f"{n} {s} ({st or 'no rule'})" for n, st, s in got)
            raise PlanError(f"tensor_parallel: {' and '.join(names)} are one tensor (tied "
                            f"weights), but the rules split them differently: {said}; give "
                            "every use the same split (a row-wise embedding and a column-wise "
                            "head both split the vocabulary)")


def _mesh_text(plan: Plan) -> str:
    return " x ".join(f"{d}={v}" for d, v in plan.mesh.degrees().items())


def layout(plan: Plan, model: nn.Module) -> list[ParamLayout]:
    """How each parameter of `model` is split under the (resolved) plan."""
    styles = tp_styles(plan, model) if plan.mesh.tp > 1 else {}
    fsdp = plan.mesh.dp_shard > 1 or plan.data_parallel.flavour(plan.mesh) == "fsdp"
    stage_of = _stages(plan, model)
    out, seen = [], set()
    for mod_name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            # a tied weight is held once per stage using it, under its first name there
            if (id(p), stage_of(mod_name)) in seen:
                continue
            seen.add((id(p), stage_of(mod_name)))
            full = f"{mod_name}.{pname}" if mod_name else pname
            tp_dim, style = None, None
            if mod_name in styles:
                style = styles[mod_name][1].style
                key = next((k for k in _SHARD_DIMS if k[0] == style and isinstance(mod, k[1])), None)
                tp_dim = _SHARD_DIMS[key][0].get(pname) if key else None
            out.append(ParamLayout(full, tuple(p.shape), tp_dim, style, fsdp, stage_of(mod_name)))
    return out


def _stages(plan: Plan, model: nn.Module):
    pipe = plan.pipeline
    if pipe is None or plan.mesh.pp == 1:
        return lambda name: 0
    if pipe.split == "planner":
        return lambda name: None
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    cuts = [order[s] for s in pipe.split]

    def stage(name: str) -> int:
        return sum(order[name] >= c for c in cuts)
    return stage


def local_shape(p: ParamLayout, tp: int, tp_rank: int, shard: int, shard_rank: int) -> tuple[int, ...]:
    """The shape rank (tp_rank, shard_rank) holds: tp split first, then fully_shard's dim-0 chunk."""
    shape = list(p.shape)
    if p.tp_dim is not None and tp > 1:
        shape[p.tp_dim] //= tp
    if p.fsdp and shard > 1 and shape:
        chunk = -(-shape[0] // shard)  # torch.chunk: ceil-sized chunks, the last ones smaller
        shape[0] = max(0, min(chunk, shape[0] - shard_rank * chunk))
    return tuple(shape)


def memory_per_rank(plan: Plan, model: nn.Module) -> float:
    """Bytes of parameters, gradients and Adam moments on the busiest rank (activations excluded)."""
    m = plan.mesh
    per_stage: dict[object, float] = {}
    sizes = {n: p.element_size() for n, p in model.named_parameters()}
    for p in layout(plan, model):
        shape = local_shape(p, m.tp, 0, m.dp_shard, 0)
        n = 1
        for s in shape:
            n *= s
        per_stage[p.stage] = per_stage.get(p.stage, 0.0) + n * sizes.get(p.name, 4)
    if None in per_stage:  # planner-chosen stages: assume an even split
        return per_stage[None] / m.pp * BYTES_PER_PARAM_STATE
    return max(per_stage.values(), default=0.0) * BYTES_PER_PARAM_STATE
