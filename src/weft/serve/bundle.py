"""A decomposition bundle: subnets, the classes each answers, their temperatures, provenance.

On disk a bundle is a folder:

    bundle.json        format, classes, input shape, members (file, sha256, size, classes,
                       temperature, "other" output, params, FLOPs, kept ratio), provenance
    members/<name>.pt  each subnet, a torch.fx GraphModule saved whole with torch.save

It is written into a temporary sibling folder and renamed into place, so a crash leaves the old
bundle or none. Loading checks every file's size and sha256 before unpickling it (a truncated or
altered file is a BundleError naming it). Member files are pickles: load only bundles you trust.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weft.atomic import replace_dir
from weft.serve.errors import BundleError, ServeError

FORMAT = "weft-sensai-bundle"
VERSION = 1


@dataclass
class Member:
    """One subnet: outputs [logits of `classes`..., "other" if `other`]."""

    name: str
    classes: list[int]
    module: nn.Module | None
    temperature: float = 1.0
    other: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # params, flops, kept_ratio, ...

    def fold(self, input_shape: Sequence[int], device: torch.device | str = "cpu") -> str | None:
        """Serve this member with its batch norms folded into its convolutions from now on
        (`weft.serve.fold`); returns None, or why it is served as it is."""
        from weft.serve.fold import for_inference

        self._served, why = for_inference(self.module, input_shape, device)
        return why

    @torch.inference_mode()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of this member's classes, [N, len(classes)]."""
        z = (getattr(self, "_served", None) or self.module)(x)
        return torch.softmax(z.float() / self.temperature, dim=1)[:, : len(self.classes)]


@dataclass
class Bundle:
    members: list[Member]
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self):
        seen = sorted(c for m in self.members for c in m.classes)
        if seen != list(range(self.num_classes)):
            raise ServeError(f"members' classes {seen} do not cover 0..{self.num_classes - 1} exactly once")

    @classmethod
    def from_model(cls, model: nn.Module, input_shape: Sequence[int], name: str = "original",
                   class_names: list[str] | None = None, provenance: dict | None = None) -> Bundle:
        """The original classifier as a one-member bundle (the serving baseline)."""
        from weft.serve.graph import trace
        from weft.serve.pruning import count_flops, count_params

        gm = trace(model).eval()
        with torch.inference_mode():
            out = gm(torch.zeros(1, *input_shape))
        if out.dim() != 2 or out.shape[1] < 2:
            raise ServeError(f"not a classifier: output shape {tuple(out.shape)} on one input, expected (1, classes)")
        k = out.shape[1]
        info = {"params": count_params(gm), "flops": count_flops(gm, input_shape), "kept_ratio": 1.0}
        return cls([Member(name, list(range(k)), gm, 1.0, False, info)], k, tuple(input_shape), class_names,
                   provenance or {"kind": "original"})

    def summary(self) -> list[dict[str, Any]]:
        return [{"name": m.name, "classes": m.classes, "temperature": m.temperature, "other": m.other, **m.info}
                for m in self.members]

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.exists() and not (path / "bundle.json").exists() and any(path.iterdir()):
            raise BundleError(f"{path}: exists and is not a weft bundle; refusing to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        try:
            (tmp / "members").mkdir()
            entries = []
            for m in self.members:
                rel = f"members/{m.name}.pt"
                torch.save(m.module, tmp / rel)
                data = (tmp / rel).read_bytes()
                entries.append({"name": m.name, "file": rel, "bytes": len(data),
                                "sha256": hashlib.sha256(data).hexdigest(), "classes": m.classes,
                                "temperature": m.temperature, "other": m.other, "info": m.info})
            meta = {"format": FORMAT, "version": VERSION, "num_classes": self.num_classes,
                    "input_shape": list(self.input_shape), "class_names": self.class_names,
                    "members": entries, "provenance": self.provenance}
            (tmp / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
            replace_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, members: Sequence[str] | None = None) -> Bundle:
        """Read a bundle; with `members`, load only those subnets' modules (others get None)."""
        path = Path(path)
        meta = read_meta(path)
        out = []
        for i, e in enumerate(meta["members"]):
            module = None
            if members is None or e["name"] in members:
                module = _load_member(path, e)
            out.append(Member(e["name"], list(e["classes"]), module, float(e["temperature"]), bool(e["other"]),
                              dict(e.get("info", {}))))
        try:
            b = cls(out, meta["num_classes"], tuple(meta["input_shape"]), meta.get("class_names"),
                    meta.get("provenance", {}), path)
        except ServeError as exc:
            raise BundleError(f"{path / 'bundle.json'}: {exc}") from None
        return b


def _field(obj: dict, key: str, kind, where: str):
    if key not in obj:
        raise BundleError(f"{where}: field {key!r} is missing")
    v = obj[key]
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise BundleError(f"{where}: field {key!r} is {v!r}, expected {getattr(kind, '__name__', kind)}")
    return v


def read_meta(path: Path) -> dict:
    """bundle.json, validated (format, version, field types); no member file is opened."""
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder")
    mf = path / "bundle.json"
    if not mf.exists():
        raise BundleError(f"{mf}: missing; not a weft bundle (write one with `weft serve decompose`)")
    try:
        meta = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mf}: not valid JSON (truncated or altered?): {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{mf}: field 'format' is {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                          f"expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise BundleError(f"{mf}: field 'version' is {meta.get('version')!r}, this weft reads {VERSION}")
    _field(meta, "num_classes", int, str(mf))
    shape = _field(meta, "input_shape", list, str(mf))
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise BundleError(f"{mf}: field 'input_shape' is {shape!r}, expected positive integers")
    for i, e in enumerate(_field(meta, "members", list, str(mf))):
        where = f"{mf}: members[{i}]"
        if not isinstance(e, dict):
            raise BundleError(f"{where} is {e!r}, expected an object")
        for key, kind in (("name", str), ("file", str), ("sha256", str), ("bytes", int), ("classes", list),
                          ("temperature", (int, float)), ("other", bool)):
            _field(e, key, kind, where)
        if not e["temperature"] > 0:
            raise BundleError(f"{where}: field 'temperature' is {e['temperature']!r}, expected > 0")
    if not meta["members"]:
        raise BundleError(f"{mf}: field 'members' is empty")
    return meta


def verify(path: str | os.PathLike) -> dict:
    """Check bundle.json and every member file's size and sha256 without unpickling anything."""
    path = Path(path)
    meta = read_meta(path)
    for e in meta["members"]:
        _read_member(path, e)
    return meta


def _read_member(path: Path, e: dict) -> bytes:
    f = path / e["file"]
    if not f.is_file():
        raise BundleError(f"{f}: missing (listed in {path / 'bundle.json'})")
    data = f.read_bytes()
    if len(data) != e["bytes"]:
        raise BundleError(f"{f}: {len(data)} bytes, bundle.json says {e['bytes']} (truncated?)")
    if hashlib.sha256(data).hexdigest() != e["sha256"]:
        raise BundleError(f"{f}: sha256 differs from bundle.json's (file altered or corrupt)")
    return data


def _load_member(path: Path, e: dict) -> nn.Module:
    f = path / e["file"]
    data = _read_member(path, e)
    try:
        module = torch.load(io.BytesIO(data), weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling raises anything; reported with the file
        raise BundleError(f"{f}: cannot be loaded: {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise BundleError(f"{f}: holds a {type(module).__name__}, expected an nn.Module")
    return module.eval()
