"""`weft.adapt.fit`: adaptive, elastic training of the user's own model, data and optimizer.

    import torch, weft.adapt as wa

    def model():                                    # a factory, called in every worker
        return MyNet()

    def optimizer(params):
        return torch.optim.Adam(params, lr=1e-3)

    def scheduler(opt):                             # stepped once per training step
        return torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)

    if __name__ == "__main__":                      # workers are spawned processes
        report = wa.fit(model, train_set, torch.nn.functional.cross_entropy, optimizer,
                        scheduler=scheduler, policy=wa.ScheduleResize({50: 4, 120: 3}),
                        config={"workers": 2, "max_workers": 4, "batch_size": 32})
        trained = report["model"]                   # the final replica, in this process

Workers start as processes of this machine's node agent (or of other machines that
join, see `weft train --nnodes`); functions of the main script travel to them by
reference. Everything is validated here before any worker starts. `weft train --policy
P --script train.py` runs such a script with the policy file P and the command line's
options taking precedence over the script's `policy` and `config`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from weft.adapt.config import AdaptConfig

# Set by `weft train --script`: the command line's policy file, options and machines.
COMMAND_LINE: dict | None = None


def _config(config: AdaptConfig | dict | None, settings: dict, overrides: dict) -> AdaptConfig:
    base = dataclasses.asdict(config) if isinstance(config, AdaptConfig) else dict(config or {})
    return AdaptConfig.from_dict({**base, **settings, **overrides}, where="config")


def fit(model: Any, dataset: Any, loss_fn=None, optimizer=None, *, scheduler=None,
        policy: Any = None, config: AdaptConfig | dict | None = None, callbacks=(),
        state: Any = None, test: Any = None, plan: Any = None,
        policy_path: str | os.PathLike | None = None, nodes=None, timeout: float = 3600.0,
        plot: str | os.PathLike | None = None) -> dict | None:
    """Train adaptively; return the report (see `run_adaptive`) with the trained model.

    `model`: a zero-argument factory returning an nn.Module (or a module, or a model
    spec); `dataset`: a map-style Dataset of `(inputs..., target)` items, or a factory
    returning one or `(train, test)`; `loss_fn(output, target)` -> mean loss (default
    cross entropy); `optimizer(params)` -> any torch.optim optimizer (default SGD with
    `config.lr`); `scheduler(optimizer)`: an LR scheduler stepped every step; `policy`:
    a policy object, function or list (weft.adapt.policy), or `policy_path` a YAML file
    (whose `train:` section overrides `config`); `callbacks`: see weft.adapt.callbacks;
    `state`: an object with state_dict()/load_state_dict() carried across resizes,
    failures and checkpoints; `plan`: a weft.plan (DP, FSDP, TP inside a replica) applied
    in every world. The report's `model` is the trained module, `state` its parameters
    and optimizer state by name, `user_state` the final `state`. Under torchrun only the
    process that ends as rank 0 returns it (the others None).
    """
    from weft.adapt.rules import load_policy_file
    from weft.adapt.run import run_adaptive
    from weft.adapt.workload import Workload, model_factory, portable

    cli = COMMAND_LINE or {}
    policy_path = cli.get("policy_path") or policy_path
    settings: dict = {}
    if policy_path is not None:
        policy, settings = load_policy_file(policy_path)
    cfg = _config(config, settings, cli.get("overrides", {}))
    work = Workload(model, dataset, loss_fn, optimizer, scheduler, test, tuple(callbacks),
                    state, plan).portable()
    report = run_adaptive(cfg, policy=portable(policy), plot=plot, timeout=timeout,
                          nodes=cli.get("nodes", nodes), store=cli.get("store"), workload=work)
    if report is not None and report.get("state") is not None:
        trained = model_factory(work.model)()
        trained.load_state_dict(report["state"]["model"])
        report["model"] = trained
    if COMMAND_LINE is not None and report is not None:
        COMMAND_LINE.setdefault("reports", []).append(report)
    return report
