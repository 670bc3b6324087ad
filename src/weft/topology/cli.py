"""`weft topology show|save`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from weft.topology.io import resolve, save
from weft.units import fmt_bytes, fmt_rate, fmt_seconds


def _show(args) -> int:
    topo = resolve(args.spec).validate()
    con = Console()
    con.print(f"[bold]{topo.summary()}[/bold]")
    t = Table("device", "kind", "host", "memory", "peak FLOP/s", "links out")
    for d in topo.devices:
        t.add_row(d.name, d.kind, d.host, fmt_bytes(d.memory), f"{d.flops:.3g}",
                  str(len(topo.neighbors(d.name))))
    con.print(t)
    if args.links:
        lt = Table("src", "dst", "kind", "bandwidth", "latency")
        for ln in topo.links:
            lt.add_row(ln.src, ln.dst, ln.kind, fmt_rate(ln.bandwidth), fmt_seconds(ln.latency))
        con.print(lt)
    if args.out:
        from weft.topology.draw import draw

        con.print(f"wrote {draw(topo, args.out)}")
    return 0


def _save(args) -> int:
    topo = resolve(args.spec).validate()
    print(f"wrote {save(topo, args.path)}")
    return 0


_ACTIONS: list = []  # the `weft topology` sub-parsers (higher layers add actions to it)


def actions():
    """`weft topology`'s sub-parsers, for actions a higher layer provides (e.g. `optimize`,
    which needs the planner); None before `register` ran."""
    return _ACTIONS[-1] if _ACTIONS else None


def register(sub) -> None:
    p = sub.add_parser("topology", help="inspect, draw and save topologies")
    tsub = p.add_subparsers(dest="topology_command", metavar="ACTION", required=True)
    _ACTIONS.append(tsub)
    s = tsub.add_parser("show", help="print a topology (a YAML file or a builder like dgx1, ring:8)")
    s.add_argument("spec", help="YAML file or builder: dgx1, ring:N, full_mesh:N, nvswitch:N, "
                                "multi_node:NODESxPER, fat_tree:K")
    s.add_argument("--out", help="draw it to this PNG (edge width by bandwidth)")
    s.add_argument("--links", action="store_true", help="also list every directed link")
    s.set_defaults(func=_show)
    v = tsub.add_parser("save", help="write a topology (e.g. a builder) to a YAML file")
    v.add_argument("spec")
    v.add_argument("path")
    v.set_defaults(func=_save)
