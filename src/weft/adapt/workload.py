"""What an adaptive job trains: the user's model factory, data, loss, optimizer, LR scheduler,
callbacks and state (`weft.adapt.fit` makes one; the built-in digits models are one example).

A `Workload` travels pickled to every worker (over the job's store and process spawn), and
each worker `build`s it: a fresh model from the factory, the datasets, an optimizer over
the model's parameters and a scheduler over the optimizer. Functions defined in the user's
main script or in a file loaded by model spec travel *by reference* (`SpecRef`: the file and
the name, imported in the worker through weft.model_spec, never running the script's
`if __name__ == "__main__":` block), so they work on other machines too.

`check` validates a workload in the launching process, before any worker starts: the
factory builds an `nn.Module`, the dataset holds at least one global batch, the optimizer
and scheduler build, one forward/backward on two samples gives a finite scalar loss, the
state has `state_dict`/`load_state_dict`, and everything pickles. Errors name the field.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import sys
import types
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from weft.errors import WeftError


class WorkloadError(WeftError, ValueError):
    """The user's model, data, loss, optimizer, scheduler or state cannot be used."""


@dataclass(frozen=True)
class SpecRef:
    """`path/file.py:name` or `package.module:name`, imported where it is called."""

    spec: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def resolve(self):
        from weft.model_spec import load_module

        mod, attr = load_module(self.spec)
        obj = mod
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise WorkloadError(f"{self.spec}: {getattr(mod, '__weft_source__', mod.__name__)}"
                                    f" defines no {attr!r}") from None
        return obj

    def __call__(self, *args, **kwargs):
        return self.resolve()(*self.args, *args, **{**self.kwargs, **kwargs})

    def __repr__(self) -> str:
        extra = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.spec}({', '.join(extra)})" if extra else self.spec


def _source(modname: str | None) -> str | None:
    """The file of a main script or of a file loaded by model spec (None for importable
    modules: those pickle by name)."""
    mod = sys.modules.get(modname or "")
    if modname in ("__main__", "__mp_main__"):
        f = getattr(mod, "__file__", None)
        return os.path.abspath(f) if f else None
    if modname and modname.startswith("weft_user_"):
        return getattr(mod, "__weft_source__", None)
    return None


def _rebuild(spec: str, state: Any):
    cls = SpecRef(spec).resolve()
    obj = cls.__new__(cls)
    if hasattr(obj, "__setstate__") and not isinstance(state, dict):
        obj.__setstate__(state)
    else:
        obj.__dict__.update(state or {})
    return obj


class ByFile:
    """An instance of a main-script class, pickled as (its file and class name, its state):
    unpickled in a worker (on any machine), it is rebuilt from the class in that file."""

    def __init__(self, obj: Any, spec: str):
        self.obj, self.spec = obj, spec

    def __reduce__(self):
        return _rebuild, (self.spec, self.obj.__getstate__() if hasattr(self.obj, "__getstate__")
                          else self.obj.__dict__)


def portable(obj: Any) -> Any:
    """`obj`, made to travel to workers on any machine: a function or class of the main
    script (or of a file loaded by model spec) becomes a SpecRef to it, an instance of such a
    class a ByFile; lists and tuples item by item; anything else as it is."""
    if isinstance(obj, (list, tuple)):
        return type(obj)(portable(o) for o in obj)
    if isinstance(obj, (type, types.FunctionType)):
        qual = getattr(obj, "__qualname__", "")
        source = _source(getattr(obj, "__module__", None))
        return SpecRef(f"{source}:{qual}") if source and "<" not in qual else obj
    source = _source(type(obj).__module__)
    qual = type(obj).__qualname__
    return ByFile(obj, f"{source}:{qual}") if source and "<" not in qual else obj


class _Copy:
    """A factory that returns a deep copy of a given module (a module instead of a factory)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self) -> nn.Module:
        return copy.deepcopy(self.module)


@dataclass
class Workload:
    """What to train. `model`: a zero-argument factory returning an `nn.Module` (called in
    every worker), a module (copied), or a model spec string. `dataset`: a map-style
    Dataset whose items are `(inputs..., target)`, or a zero-argument callable returning
    one or `(train, test)`. `loss_fn(output, target)`: the *mean* loss of a batch (default
    cross entropy), given the output as the model returns it (a Hugging Face `ModelOutput`
    too: the loss takes `output.logits`), as `weft.parallelize`'s `model.step` gives it.
    `optimizer(params)`: any torch.optim optimizer (default SGD with
    `AdaptConfig.lr`/`momentum`). `scheduler(optimizer)`: an LR scheduler stepped once per
    training step. `callbacks`: objects with any of `on_step_end(run)`, `on_change(run,
    event)`, `on_train_end(run)` (see weft.adapt.callbacks). `state`: an object with
    `state_dict()`/`load_state_dict()` that survives resizes, failures and resumes.
    `plan`: a weft.plan (file, dict or Plan) applied with weft.parallelize in each world."""

    model: Any
    dataset: Any
    loss_fn: Callable | None = None
    optimizer: Callable | None = None
    scheduler: Callable | None = None
    test: Any = None
    callbacks: tuple = ()
    state: Any = None
    plan: Any = None

    def portable(self) -> "Workload":
        """The same workload with main-script functions replaced by references."""
        return replace(self, model=portable(self.model), dataset=portable(self.dataset),
                       loss_fn=portable(self.loss_fn), optimizer=portable(self.optimizer),
                       scheduler=portable(self.scheduler), test=portable(self.test),
                       callbacks=portable(tuple(self.callbacks or ())),
                       state=portable(self.state))

    @property
    def name(self) -> str:
        m = self.model
        return repr(m) if isinstance(m, (str, SpecRef)) else getattr(m, "__qualname__",
                                                                      type(m).__name__)


def from_spec(model: str, data: str | None = None) -> Workload:
    """A workload from a model-spec file or module (`model`, `dataset()`, `loss_fn`,
    `optimizer(params)` and, for adaptive training, `scheduler(optimizer)`); `data`: another
    `file.py:fn` returning the dataset (or (train, test)) instead of the spec's `dataset`."""
    from weft.model_spec import extra, load_module, resolve

    spec = resolve(model)
    mod, _ = load_module(spec)
    target = spec.partition(":")[0]

    def ref(name):
        return SpecRef(f"{target}:{name}") if extra(spec, name) is not None else None

    if data is None and extra(spec, "dataset") is None:
        raise WorkloadError(f"model spec {model!r}: {getattr(mod, '__weft_source__', target)} "
                            "defines no dataset(); define one or pass --data FILE.py:FN")
    dataset = SpecRef(resolve(data)) if data else ref("dataset")
    return Workload(model=spec, dataset=dataset, loss_fn=ref("loss_fn"),
                    optimizer=ref("optimizer"), scheduler=ref("scheduler"))


def digits(model: str = "mlp", hidden: int = 64) -> Workload:
    """The built-in example: scikit-learn's digits with a small MLP or CNN (weft.demo),
    named by spec so that weft.adapt does not import the demo package statically."""
    if model == "mlp":
        factory = SpecRef("weft.demo.models:digits_mlp", (hidden, 2))
    else:
        factory = SpecRef("weft.demo.models:digits_cnn", (max(4, hidden // 8),))
    return Workload(model=factory, dataset=SpecRef("weft.demo.data:digits",
                                                   kwargs={"flat": model == "mlp"}))


# -- in a worker ------------------------------------------------------------------------------
@dataclass
class Built:
    """A workload made concrete in one process."""

    make_model: Callable[[], nn.Module]
    train: Any
    test: Any
    loss_fn: Callable
    make_optimizer: Callable
    make_scheduler: Callable | None
    callbacks: list
    state: Any
    plan: Any


def model_factory(model: Any) -> Callable[[], nn.Module]:
    if isinstance(model, nn.Module):
        return _Copy(model)
    if isinstance(model, str):
        return SpecRefModel(model)
    if callable(model):
        return model
    raise WorkloadError(f"model: expected a function returning an nn.Module, a module or a "
                        f"model spec, got {type(model).__name__}")


class SpecRefModel:
    """Factory of the model a spec string names (weft.model_spec.load_model). A spec whose
    `model` is a module instance gives a deep copy of it on every call, as a module given
    directly does (`_Copy`): the instance is the loaded file's, the same object each time,
    and a plan rebuilt after a membership change must start from fresh parameters (with
    no gradients left from the previous world)."""

    def __init__(self, spec: str):
        self.spec = spec

    def __call__(self) -> nn.Module:
        from weft.model_spec import load_model, load_module

        model = load_model(self.spec)
        mod, attr = load_module(self.spec)
        return copy.deepcopy(model) if getattr(mod, attr, None) is model else model


class _DefaultOptimizer:
    def __init__(self, lr: float, momentum: float):
        self.lr, self.momentum = lr, momentum

    def __call__(self, params):
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)


def build(w: Workload, lr: float | None = None, momentum: float = 0.9) -> Built:
    """Make `w` concrete here (datasets loaded, factories resolved; no model built yet)."""
    data = w.dataset() if callable(w.dataset) and not isinstance(w.dataset, torch.utils.data.Dataset) \
        else w.dataset
    test = w.test() if callable(w.test) and not isinstance(w.test, torch.utils.data.Dataset) \
        else w.test
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], torch.Tensor):
        data, test2 = data
        test = test if test is not None else test2
    for name, d in (("dataset", data), ("test", test)):
        if d is not None and not (hasattr(d, "__getitem__") and hasattr(d, "__len__")):
            raise WorkloadError(f"{name}: expected a map-style Dataset (with __getitem__ and "
                                f"__len__), got {type(d).__name__}")
    loss = w.loss_fn if w.loss_fn is not None else nn.functional.cross_entropy
    opt = w.optimizer if w.optimizer is not None else _DefaultOptimizer(
        0.05 if lr is None else lr, momentum)
    return Built(model_factory(w.model), data, test, loss, opt, w.scheduler,
                 list(w.callbacks or ()), copy.deepcopy(w.state), w.plan)


# -- batches ----------------------------------------------------------------------------------
def get_batch(dataset, idx: torch.Tensor):
    """The samples `idx` of `dataset`, collated (a TensorDataset is indexed directly)."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return tuple(t[idx] for t in dataset.tensors)
    from torch.utils.data import default_collate

    return default_collate([dataset[int(i)] for i in idx])


def split(batch, where: str = "dataset") -> tuple[tuple, Any]:
    """(model inputs, target) of a collated batch `(inputs..., target)`."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return tuple(batch[:-1]), batch[-1]
    raise WorkloadError(f"{where}: items must be (inputs..., target) tuples, got "
                        f"{type(batch).__name__}")


def evaluate(model: nn.Module, dataset, loss_fn, batch: int = 256) -> dict:
    """Mean loss (and accuracy, for class logits) of `model` on `dataset`."""
    if dataset is None or len(dataset) == 0:
        return {}
    total, loss_sum, correct, classify = 0, 0.0, 0, True
    was = model.training
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(dataset), batch):
            idx = torch.arange(lo, min(lo + batch, len(dataset)))
            inputs, y = split(get_batch(dataset, idx))
            out = model(*inputs)
            loss_sum += float(loss_fn(out, y)) * len(idx)
            total += len(idx)
            if classify and torch.is_tensor(out) and out.dim() == 2 and torch.is_tensor(y) \
                    and y.dim() == 1 and not y.is_floating_point():
                correct += int((out.argmax(1) == y).sum())
            else:
                classify = False
    model.train(was)
    return {"loss": loss_sum / total, **({"accuracy": correct / total} if classify else {})}


# -- validation in the launching process -------------------------------------------------------
def _structured(out) -> str:
    """Where a loss failed on a structured output (a Hugging Face `ModelOutput`, a dict, a
    tuple): what `loss_fn` was given, and what to do about it."""
    if out is None or torch.is_tensor(out):
        return ""
    what = type(out).__name__
    if hasattr(out, "keys"):
        what += f" with fields {', '.join(map(str, out.keys()))}"
    elif isinstance(out, (tuple, list)):
        what += f" of {len(out)}"
    return (f" (loss_fn gets the model's output as the model returns it, here a {what}: "
            "take the tensor the loss needs in loss_fn, e.g. output.logits)")


def check(w: Workload, workers: int, batch_size: int, batch_rule: str = "per_worker",
          lr: float | None = None, momentum: float = 0.9) -> int:
    """Validate `w` before any worker starts (see module doc); returns the dataset size."""
    try:
        blob = pickle.dumps(w)
    except Exception as exc:  # noqa: BLE001 - name what does not travel
        raise WorkloadError(f"the workload cannot be sent to the workers (pickle: {exc}); "
                            "define functions and classes at module level") from None
    w = pickle.loads(blob)
    try:
        b = build(w, lr, momentum)
    except WorkloadError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's dataset factory failed
        raise WorkloadError(f"dataset: loading failed: {type(exc).__name__}: {exc}") from exc
    n = len(b.train)
    need = workers * batch_size
    if n < need:
        raise WorkloadError(f"dataset: {n} samples is smaller than the global batch {need} "
                            f"({workers} workers x batch_size {batch_size})")
    try:
        model = b.make_model()
    except Exception as exc:  # noqa: BLE001
        raise WorkloadError(f"model: the factory {w.name} failed: {type(exc).__name__}: "
                            f"{exc}") from exc
    if not isinstance(model, nn.Module):
        raise WorkloadError(f"model: the factory returned {type(model).__name__}, not an "
                            "nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise WorkloadError("model: it has no trainable parameters")
    try:
        opt = b.make_optimizer(model.parameters())
    except Exception as exc:  # noqa: BLE001
        raise WorkloadError(f"optimizer: building it failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(opt, torch.optim.Optimizer):
        raise WorkloadError(f"optimizer: expected a torch.optim.Optimizer, got "
                            f"{type(opt).__name__}")
    if b.make_scheduler is not None:
        try:
            sched = b.make_scheduler(opt)
        except Exception as exc:  # noqa: BLE001
            raise WorkloadError(f"scheduler: building it failed: {type(exc).__name__}: "
                                f"{exc}") from exc
        if not all(hasattr(sched, a) for a in ("step", "state_dict", "load_state_dict")):
            raise WorkloadError(f"scheduler: {type(sched).__name__} has no step/state_dict/"
                                "load_state_dict")
    if b.state is not None and not all(hasattr(b.state, a) for a in ("state_dict",
                                                                      "load_state_dict")):
        raise WorkloadError(f"state: {type(b.state).__name__} needs state_dict() and "
                            "load_state_dict()")
    out = None
    try:
        inputs, y = split(get_batch(b.train, torch.arange(min(2, n))))
        out = model(*inputs)
        loss = b.loss_fn(out, y)
    except WorkloadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise WorkloadError(f"model/loss_fn: a forward pass on 2 samples failed: "
                            f"{type(exc).__name__}: {exc}{_structured(out)}") from exc
    if not (torch.is_tensor(loss) and loss.numel() == 1 and loss.requires_grad):
        raise WorkloadError(f"loss_fn: must return a scalar tensor with a gradient, got "
                            f"{type(loss).__name__}{tuple(getattr(loss, 'shape', ()))}")
    if not math.isfinite(float(loss.detach())):
        raise WorkloadError(f"loss_fn: the loss of 2 samples is {float(loss.detach())}")
    if b.plan is not None:
        from weft.plan.check import check as check_plan
        from weft.plan.io import resolve

        check_plan(resolve(b.plan), model, workers)
    return n
