"""The one harness every benchmark goes through: arguments, figures, the target check, the
summary table and the --json file.

    p = parser(__doc__)                        # --quick, --json PATH (and the caller's own)
    args = p.parse_args()
    figs = [figure("dp/4 ranks/weft vs ddp", ratio, "x", target=0.95)]
    return emit(figs, args.json, "data parallel", conditions="4 gloo ranks, MLP 64-512-10")

A figure is ``{"name", "value", "unit", "target", "better"}``; `met` is the one rule that says
whether it reaches its target (``value >= target`` when higher is better, ``<=`` when lower
is); `emit` prints the table with that verdict, writes the JSON list and returns the exit
status (0, or 1 when a target is missed and ``strict``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from weft.runs import write_json  # noqa: E402

BETTER = ("higher", "lower")


def parser(description: str | None) -> argparse.ArgumentParser:
    """Arguments every benchmark takes; add the benchmark's own to the returned parser."""
    first = (description or "").strip().splitlines()
    p = argparse.ArgumentParser(description=first[0] if first else None)
    p.add_argument("--quick", action="store_true", help="a small version (under a minute)")
    p.add_argument("--json", metavar="PATH", help="write figures as a JSON list to PATH")
    return p


def figure(name: str, value: float, unit: str, target: float | None = None,
           better: str = "higher") -> dict:
    if better not in BETTER:
        raise ValueError(f"figure {name!r}: better must be one of {BETTER}, got {better!r}")
    return {"name": name, "value": float(value), "unit": unit,
            "target": None if target is None else float(target), "better": better}


def met(f: dict) -> bool | None:
    """Whether figure `f` reaches its target (None when it has none): the one comparison rule."""
    if f.get("target") is None:
        return None
    return f["value"] >= f["target"] if f["better"] == "higher" else f["value"] <= f["target"]


def emit(figures: list[dict], json_path: str | None, title: str, conditions: str | None = None,
         strict: bool = False) -> int:
    """Print the figures as a table (with `conditions` under it), write the JSON list, and
    return 0, or 1 when `strict` and a target is missed."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("figure", "value", "unit", "target", "met"):
        t.add_column(col, overflow="fold")
    for f in figures:
        ok = met(f)
        target = "" if f["target"] is None else \
            f"{'>=' if f['better'] == 'higher' else '<='} {f['target']:g}"
        t.add_row(f["name"], f"{f['value']:.4g}", f["unit"], target,
                  "" if ok is None else "[green]yes[/]" if ok else "[red]no[/]")
    con = Console(width=max(120, Console().width))
    con.print(t)
    if conditions:
        con.print(conditions)
    missed = [f["name"] for f in figures if met(f) is False]
    if missed:
        con.print(f"[red]{len(missed)} target(s) missed[/]: {', '.join(missed)}")
    if json_path:
        write_json(json_path, figures)
        print(f"wrote {json_path}")
    return 1 if strict and missed else 0
