"""The device mesh of a plan: torch's DeviceMesh with the four named dims, and this rank's place."""

from __future__ import annotations

import os
import string

import torch
import torch.distributed as dist

from weft.errors import PlanError
from weft.plan.format import DIMS, Plan


def device_for_backend() -> torch.device:
    """cuda:LOCAL_RANK under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def device_memory(device: torch.device) -> float | None:
    """Total memory of `device` in bytes where torch knows it (CUDA), else None."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    return None


DEVICE_ENV = "WEFT_DEVICE"


def this_device() -> str | None:
    """The topology device this process runs on: $WEFT_DEVICE, with {rank}, {local_rank},
    {node} (torchrun's GROUP_RANK) and {host} filled in, e.g. 'n{node}.gpu{local_rank}'
    set once for a whole torchrun job. None when unset."""
    env = os.environ
    return device_name(env.get(DEVICE_ENV), rank=env.get("RANK", ""),
                       local_rank=env.get("LOCAL_RANK", ""), node=env.get("GROUP_RANK", ""))


def device_name(template: str | None, *, rank, local_rank, node, host: str | None = None
                ) -> str | None:
    """`template` ($WEFT_DEVICE's text) with the launcher fields filled in; None for none."""
    import socket

    if not template:
        return None
    if host is None:
        host = socket.gethostname().split(".")[0]
    fields = {"rank": rank, "local_rank": local_rank, "node": node, "host": host}
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise PlanError(f"${DEVICE_ENV}={template!r}: unknown or malformed field {exc}; "
                        f"use {{rank}}, {{local_rank}}, {{node}} or {{host}}") from None


def launch_devices(world: int, env_launched: bool) -> dict[int, str]:
    """{process rank: device} for the processes of this launch whose $WEFT_DEVICE this
    (parent) process can work out before any rank starts; {} when $WEFT_DEVICE is unset.

    A local launch (`weft.launch.launch`) starts ranks 0..world-1 with LOCAL_RANK = RANK
    and this process's environment: all of them. Under torchrun (`env_launched`) this
    process is one rank and knows its node's: ranks RANK-LOCAL_RANK ... of LOCAL_WORLD_SIZE
    (torchrun numbers a node's workers contiguously), on the same node and host; and every
    node's when the nodes are alike (GROUP_WORLD_SIZE nodes of LOCAL_WORLD_SIZE workers
    make the world, node g's ranks starting at g x LOCAL_WORLD_SIZE) and the template does
    not name the host, which only that node knows: so two nodes' workers that $WEFT_DEVICE
    puts on one device are found here too."""
    env = os.environ
    template = env.get(DEVICE_ENV)
    if not template:
        return {}
    node = env.get("GROUP_RANK", "")
    if not env_launched:
        return {r: device_name(template, rank=str(r), local_rank=str(r), node=node)
                for r in range(world)}
    rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    width, first = int(env.get("LOCAL_WORLD_SIZE", "1")), rank - local
    starts = {node: first}  # node -> its first rank
    try:
        uses_host = "host" in {f for _, f, _, _ in string.Formatter().parse(template) if f}
    except ValueError:  # malformed: device_name says how
        uses_host = True
    count = env.get("GROUP_WORLD_SIZE", "")
    if (not uses_host and count.isdigit() and node.isdigit() and int(count) * width == world
            and first == int(node) * width):
        starts = {str(g): g * width for g in range(int(count))}
    return {s + i: device_name(template, rank=str(s + i), local_rank=str(i), node=g)
            for g, s in starts.items() for i in range(width)}


def check_launch_placement(placement, world: int, env_launched: bool) -> None:
    """In the parent, before any rank starts: the processes this launch starts
    (`launch_devices`) run on distinct devices of the plan's `placement`. A PlanError
    starting 'placement: ' names $WEFT_DEVICE's value and the process otherwise; the
    ranks check the whole world again when they build the mesh (`mesh_ranks`)."""
    if not placement:
        return
    template = os.environ.get(DEVICE_ENV)
    where = f"${DEVICE_ENV}={template!r}"
    try:
        devices = launch_devices(world, env_launched)
    except PlanError as exc:
        raise PlanError(f"placement: {exc}") from None
    if len(placement) != world:
        raise PlanError(f"placement: {len(placement)} devices for {world} processes")
    shown = f"{list(placement)[:8]}{' ...' if len(placement) > 8 else ''}"
    seen: dict[str, int] = {}
    for r, d in sorted(devices.items()):
        if d not in placement:
            raise PlanError(f"placement: {where} puts rank {r} on {d!r}, which is not in the "
                            f"plan's placement {shown}")
        if d in seen:
            width = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if env_launched else world
            nodes = (f" (they run on nodes {seen[d] // width} and {r // width}: name the node "
                     "with {node} or {host})") if seen[d] // width != r // width else ""
            raise PlanError(f"placement: {where} puts ranks {seen[d]} and {r} both on {d!r}; "
                            f"each rank needs its own device of the placement{nodes}")
        seen[d] = r


def mesh_ranks(placement, devices: list[str | None]) -> list[int]:
    """The process rank of every mesh rank under a plan's `placement` (mesh rank r runs
    on device placement[r]), given the device each process runs on (`devices[g]`).

    No placement, or no process that knows its device: rank order (the launcher started
    process r on placement[r]). Otherwise every process must name a distinct device of
    the placement."""
    world = len(devices)
    if not placement or all(d is None for d in devices):
        return list(range(world))
    where = " (set $WEFT_DEVICE in every process, or in none)"
    missing = [g for g, d in enumerate(devices) if d is None]
    if missing:
        raise PlanError(f"placement: processes {missing[:8]} do not know their device{where}")
    if len(placement) != world:
        raise PlanError(f"placement: {len(placement)} devices for {world} processes")
    index = {d: r for r, d in enumerate(placement)}
    unknown = [(g, d) for g, d in enumerate(devices) if d not in index]
    if unknown:
        g, d = unknown[0]
        raise PlanError(f"placement: process {g} runs on {d!r}, which is not in the plan's "
                        f"placement {list(placement)[:8]}{' ...' if world > 8 else ''}")
    seen: dict[str, int] = {}
    for g, d in enumerate(devices):
        if d in seen:
            raise PlanError(f"placement: processes {seen[d]} and {g} both run on {d!r}")
        seen[d] = g
    out = [0] * world
    for g, d in enumerate(devices):
        out[index[d]] = g
    return out


def build_mesh(plan: Plan, device: torch.device):
    """A DeviceMesh over all ranks with dims (pp, dp_replicate, dp_shard, tp), tp fastest.

    Size-1 dims are kept so that every slice the runtime asks for exists; the plan's
    mesh must be resolved (`weft.plan.check`) first. With a `placement` and processes
    that know their device (`this_device`), mesh rank r is the process on placement[r]
    (`mesh_ranks`; every process learns the others' devices by one all-gather): the
    processes re-join the default process group numbered as their mesh ranks (`rejoin`),
    so afterwards `dist.get_rank()` is the mesh rank (process groups made before are
    gone); only the first mesh of a process may do that. torch numbers a subgroup's ranks
    in sorted order, so permuting the ranks of a DeviceMesh instead would misorder the
    shards of its collectives.
    """
    from torch.distributed.device_mesh import init_device_mesh

    shape = tuple(getattr(plan.mesh, d) for d in DIMS)
    if plan.placement:
        try:
            mine: tuple = (this_device(), None)
        except PlanError as exc:  # raised below on every rank, not here alone
            mine = (None, str(exc))
        got: list = [None] * dist.get_world_size()
        dist.all_gather_object(got, mine)
        errors = [e for _, e in got if e]
        if errors:
            raise PlanError(errors[0])
        order = mesh_ranks(plan.placement, [d for d, _ in got])
        if order != list(range(len(order))):
            if _MESHES_BUILT:  # the same on every rank: they all built the same meshes
                raise PlanError("placement: it renumbers the processes, which only the first "
                                "weft.parallelize of a process may do (torch caches sharding "
                                "per mesh, and would reuse groups the re-join removes)")
            rejoin(order.index(dist.get_rank()))
    if _MESHES_BUILT:
        _forget_sharding_cache()
    _MESHES_BUILT.append(plan.name)
    return init_device_mesh(device.type, shape, mesh_dim_names=DIMS,
                            backend_override=_same_timeout(device, shape))


def _same_timeout(device, shape: tuple[int, ...]) -> dict | None:
    """The mesh dims' new process groups with the default group's timeout. torch gives a
    subgroup its backend's default (30 minutes) whatever the default group has, so a rank
    that stopped answering would hold its tp or dp peers that long instead of the job's
    timeout. A dim over the whole world is left out: torch then reuses the default group
    (an override would make it build a new one). Done for gloo (the CPU backend this is
    tested on); other backends keep torch's behaviour."""
    if dist.get_backend() != "gloo":
        return None
    timeout = default_timeout(device)
    if timeout is None:
        return None
    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = timeout
    world = dist.get_world_size()
    return {d: ("gloo", opts) for d, n in zip(DIMS, shape) if n != world} or None


def default_timeout(device: torch.device):
    """The default process group's timeout (a timedelta), or None where the backend does
    not tell it: to give a new subgroup, which torch otherwise gives its backend's default."""
    try:
        return dist.group.WORLD._get_backend(device).options._timeout
    except (AttributeError, RuntimeError):
        return None


_MESHES_BUILT: list[str] = []  # plans whose mesh this process built


def _forget_sharding_cache() -> None:
    """Empty DTensor's sharding-propagation caches. They are keyed by mesh *value* (ranks,
    shape, dim names), and their output specs hold the mesh object that made them: a mesh
    built again over the same ranks in a new process group (an elastic job back at a world
    size it had before) would get DTensors on the old mesh, whose groups are gone ("Could
    not resolve the process group registered under the name ...")."""
    try:
        from torch.distributed.tensor.debug import _clear_sharding_prop_cache
    except ImportError:  # older torch: nothing cached across groups to clear that way
        return
    _clear_sharding_prop_cache()


def rejoin(rank: int, timeout_s: float = 300.0) -> None:
    """Leave the default process group and join a new one (same backend, same store under
    a fresh prefix, same world) as `rank`. Every process calls it at once."""
    import datetime

    from torch.distributed.distributed_c10d import _get_default_store

    store, backend = _get_default_store(), dist.get_backend()
    world = dist.get_world_size()
    generation = int(os.environ.get("WEFT_REJOINS", "0")) + 1
    os.environ["WEFT_REJOINS"] = str(generation)
    dist.barrier()
    dist.destroy_process_group()
    dist.init_process_group(backend, store=dist.PrefixStore(f"weft/rejoin{generation}", store),
                            rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


def coordinates(mesh) -> dict[str, int]:
    """This rank's coordinate along every dim (all zeros without a mesh)."""
    if mesh is None:
        return {d: 0 for d in DIMS}
    return dict(zip(DIMS, mesh.get_coordinate()))


def dp_rank_size(plan: Plan, coords: dict[str, int]) -> tuple[int, int]:
    """(index of this rank's data replica, number of replicas): over dp_replicate x dp_shard.

    Ranks that differ only in tp (or pp) coordinate share a replica and read the same batch.
    """
    m = plan.mesh
    return coords["dp_replicate"] * m.dp_shard + coords["dp_shard"], m.dp
