"""What a job runs: a model spec or a command, both under one contract (``contract.py``).

In jobs.yaml a job names one of::

    model: my_model.py           # a file or module with `model` (module or factory), dataset(), loss_fn
    dataset: data.py:load        # optional: a function returning (train, test); default: the model's dataset()
    batch: 32                    # optional, per step over all workers (model jobs)
    lr: 0.05                     # optional, SGD with momentum 0.9 unless the spec defines optimizer(params)
    ---
    command: "{python} train.py --ckpt {checkpoint}"   # a string (split like a shell) or a list

A job with neither runs ``DEFAULT_MODEL`` on ``DEFAULT_DATASET``. Relative
files are taken from the jobs file's folder, and commands run there.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from weft.cluster.contract import PLACEHOLDERS, JobEnv
from weft.cluster.model import ClusterError

DEFAULT_MODEL = "weft.demo.models:digits_mlp"
DEFAULT_DATASET = "weft.demo.data:digits"
FIELDS = ("model", "dataset", "batch", "lr", "command")


def _resolve(spec: str, base: Path) -> str:
    """A spec naming a relative file, made absolute against ``base``; modules unchanged."""
    target, sep, attr = spec.partition(":")
    if (target.endswith(".py") or "/" in target) and not Path(target).is_absolute():
        target = str((base / target).resolve())
    return target + sep + attr


def load_dataset(model: str, dataset: str | None):
    """The function returning (train, test): ``dataset`` (``file_or_module[:function]``,
    default function ``dataset``) or else the model spec's own ``dataset``."""
    from weft.model_spec import load_module

    if dataset:
        target, _, attr = dataset.partition(":")
        mod, attr = load_module(f"{target}:{attr or 'dataset'}")
        what = f"dataset spec {dataset!r}"
    else:
        mod, _ = load_module(model)
        attr, what = "dataset", f"model spec {model!r}"
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ClusterError(f"{what}: no function {attr!r} returning (train, test)"
                           + ("" if dataset else "; define dataset() there or give the job a 'dataset'"))
    return fn


@dataclass(frozen=True)
class ModelTask:
    """Train ``model`` with data parallelism on the job's workers (``python -m weft.cluster.model_job``)."""

    model: str = DEFAULT_MODEL
    dataset: str | None = None
    batch: int = 32
    lr: float = 0.05
    where: str = "job"

    def command(self, env: JobEnv) -> tuple[list[str], str | None]:
        argv = [sys.executable, "-m", "weft.cluster.model_job", "--model", self.model,
                "--batch", str(self.batch), "--lr", repr(self.lr)]
        return argv + (["--dataset", self.dataset] if self.dataset else []), None

    def check(self) -> None:
        """Import the spec here, in the parent, so a bad one fails before any job starts."""
        from weft.errors import PlanError
        from weft.model_spec import load_module

        try:
            mod, attr = load_module(self.model)
            if getattr(mod, attr, None) is None:
                raise ClusterError(f"model spec {self.model!r}: {mod.__name__} has no attribute {attr!r}")
            load_dataset(self.model, self.dataset)
        except (PlanError, ClusterError) as exc:
            raise ClusterError(f"{self.where}: {exc}") from None


@dataclass(frozen=True)
class CommandTask:
    """Run an arbitrary command that follows the contract (it checkpoints and resumes itself)."""

    args: tuple[str, ...]
    cwd: str | None = None
    where: str = "job"

    def command(self, env: JobEnv) -> tuple[list[str], str | None]:
        values = env.values()
        return [a.format(**values) for a in self.args], self.cwd

    def check(self) -> None:
        """Placeholders known and the program found, before any job starts."""
        values = {k: "" for k in PLACEHOLDERS} | {"python": sys.executable}
        for a in self.args:
            try:
                a.format(**values)
            except (KeyError, IndexError, ValueError) as exc:
                raise ClusterError(f"{self.where}: command: argument {a!r}: bad placeholder ({exc}); "
                                   f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)} "
                                   "(write {{ and }} for literal braces)") from None
        prog = self.args[0].format(**values)
        found = (Path(self.cwd or ".") / prog).is_file() if "/" in prog else shutil.which(prog)
        if not found:
            raise ClusterError(f"{self.where}: command: program {prog!r} not found"
                               + (f" (relative to {self.cwd})" if "/" in prog and self.cwd else " on PATH"))


def parse_task(item: dict, where: str, base: Path) -> ModelTask | CommandTask:
    """The task of one jobs.yaml entry (syntax only; ``check()`` imports and looks up programs)."""
    if "command" in item:
        extra = [k for k in ("model", "dataset", "batch", "lr") if k in item]
        if extra:
            raise ClusterError(f"{where}: 'command' cannot be combined with {extra}")
        cmd = item["command"]
        if isinstance(cmd, str):
            args = shlex.split(cmd)
        elif isinstance(cmd, list) and all(isinstance(a, (str, int, float)) for a in cmd):
            args = [str(a) for a in cmd]
        else:
            raise ClusterError(f"{where}: command: expected a string or a list of strings, got {cmd!r}")
        if not args:
            raise ClusterError(f"{where}: command: empty")
        return CommandTask(tuple(args), str(base), where)
    model = item.get("model")
    dataset = item.get("dataset")
    for name, value in (("model", model), ("dataset", dataset)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ClusterError(f"{where}: {name}: expected a spec like 'file.py[:attr]' or 'package.module[:attr]', "
                               f"got {value!r}")
    if model is None:
        model, dataset = DEFAULT_MODEL, dataset or DEFAULT_DATASET
    batch, lr = item.get("batch", 32), item.get("lr", 0.05)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ClusterError(f"{where}: batch: expected an integer >= 1, got {batch!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ClusterError(f"{where}: lr: expected a number > 0, got {lr!r}")
    return ModelTask(_resolve(model, base), _resolve(dataset, base) if dataset else None, batch, float(lr), where)
