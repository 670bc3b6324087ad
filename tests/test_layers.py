"""Imports flow one way through weft's layers; this test parses every import (ast) and fails
on any that goes against the order.

    base: {errors, units, atomic, tensors} <- {files, launch, model_spec, runs}
      <- topology <- collectives <- plan <- parallel <- {planner, adapt} <- {cluster, serve}
      <- {cli, train_cli, demo, the package root}

A module may import its own package and anything in a lower layer, never a higher layer or a
sibling package of its own layer (planner and adapt do not import each other). Imports inside
functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = [
    ["errors", "units", "atomic", "tensors"],
    ["args", "files", "launch", "model_spec", "runs"],
    ["topology"],
    ["collectives"],
    ["plan"],
    ["parallel"],
    ["planner", "adapt"],
    ["cluster", "serve"],
    ["cli", "train_cli", "demo", ""],  # "": the package root (weft/__init__.py)
    ["__main__"],
]


def unit(module: str) -> str:
    """The layering unit of a weft module: `weft.planner.partition` -> 'planner'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(u: str) -> int:
    for i, names in enumerate(LAYERS):
        if u in names:
            return i
    raise KeyError(u)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported weft module) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from weft import x` imports the submodule weft.x when there is one
            if target in ("weft",) and node.names:
                out += [(node.lineno, f"weft.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return [(ln, m) for ln, m in out if m == "weft" or m.startswith("weft.")]


def violations(root: Path) -> list[str]:
    """Every import against the layer order in the `weft` package under `root`."""
    found = []
    for path in sorted((root / "weft").rglob("*.py")):
        module = module_name(path, root)
        src = unit(module)
        try:
            lo = layer_of(src)
        except KeyError:
            found.append(f"{path.relative_to(root)}: package {src!r} has no layer (add it to LAYERS)")
            continue
        for line, target in imports(path, module):
            dst = unit(target)
            if dst == src:
                continue
            try:
                hi = layer_of(dst)
            except KeyError:
                if (root / "weft" / dst).exists() or (root / "weft" / f"{dst}.py").exists():
                    found.append(f"{path.relative_to(root)}:{line}: imports {target}, whose package "
                                 f"{dst!r} has no layer")
                continue
            if hi > lo or (hi == lo and dst != src):
                found.append(f"{path.relative_to(root)}:{line}: {module} (layer {lo}: {src or 'weft'}) "
                             f"imports {target} (layer {hi}: {dst or 'weft'})")
    return found


def test_weft_imports_follow_the_layers():
    assert (SRC / "weft").is_dir()
    assert violations(SRC) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / "weft" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_a_reversed_import_is_caught(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "topology/__init__.py": "from weft.errors import *\n",
        "parallel/__init__.py": "",
        "parallel/data.py": "from weft.topology import x\n",               # down: fine
        "planner/__init__.py": "",
        "planner/partition.py": "from ..parallel import data\n",           # down, relative: fine
        "topology/model.py": "def f():\n    from weft.parallel.data import g\n",  # up: caught
        "adapt/__init__.py": "import weft.planner.partition\n",            # sibling: caught
    })
    found = violations(root)
    assert len(found) == 2, found
    assert any("topology/model.py:2" in f and "imports weft.parallel.data" in f for f in found)
    assert any("adapt/__init__.py:1" in f and "imports weft.planner.partition" in f for f in found)


def test_a_package_without_a_layer_is_reported(tmp_path):
    root = _tree(tmp_path, {"__init__.py": "", "mystery/__init__.py": ""})
    assert violations(root) == ["weft/mystery/__init__.py: package 'mystery' has no layer "
                                "(add it to LAYERS)"]


@pytest.mark.parametrize("module, expected", [("weft.planner.partition", "planner"),
                                              ("weft.errors", "errors"), ("weft", "")])
def test_unit(module, expected):
    assert unit(module) == expected
