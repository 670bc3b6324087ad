"""Shared benchmark plumbing: rich table output and the --json figure format."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from weft.runs import write_json  # noqa: E402


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a small version (under a minute)")
    p.add_argument("--json", metavar="PATH", help="write figures as a JSON list to PATH")
    return p


def figure(name: str, value: float, unit: str, target: float | None = None,
           better: str = "higher") -> dict:
    assert better in ("higher", "lower")
    return {"name": name, "value": float(value), "unit": unit, "target": target, "better": better}


def emit(figures: list[dict], json_path: str | None, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("figure", "value", "unit", "target", "met"):
        t.add_column(col)
    for f in figures:
        met = ""
        if f["target"] is not None:
            ok = f["value"] >= f["target"] if f["better"] == "higher" else f["value"] <= f["target"]
            met = "[green]yes[/]" if ok else "[red]no[/]"
        t.add_row(f["name"], f"{f['value']:.4g}", f["unit"],
                  "" if f["target"] is None else f"{'>=' if f['better'] == 'higher' else '<='} {f['target']:g}",
                  met)
    Console().print(t)
    if json_path:
        write_json(json_path, figures)
        print(f"wrote {json_path}")
