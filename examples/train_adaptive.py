"""Adaptive, elastic training of your own model, data, optimizer and LR schedule: the GPT
example (examples/gpt.py) with AdamW and a warm-up schedule, on 2 workers that grow to 4
and shrink to 3 while it trains (nobody restarts), keeping the global batch.

    python examples/train_adaptive.py
    weft train --policy examples/elastic.yaml --script examples/train_adaptive.py

(With `weft train --script` the policy file and the command line's options take
precedence over the `policy` and `config` below.) Functions defined here travel to the
workers by reference to this file, so define them at module level.
"""

import torch

import gpt  # examples/gpt.py, next to this file
import weft.adapt as wa


def model():
    return gpt.model()  # seeded: every worker builds the same weights


def dataset():
    return gpt.dataset(max_chars=200_000)  # (train, test) character windows


def loss_fn(logits, targets):
    return gpt.loss_fn(logits, targets)


def optimizer(params):
    return torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01)


def warmup(step: int) -> float:
    return min(1.0, (step + 1) / 20)


def scheduler(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, warmup)


class Tokens:
    """Your own state: survives resizes, failures and checkpoints like the model."""

    def __init__(self):
        self.seen = 0

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, d):
        self.seen = d["seen"]


class CountTokens:
    def on_step_end(self, run):
        run.state.seen += int(run.metrics["samples"]) * gpt.CONFIG["block"]


if __name__ == "__main__":  # workers are spawned processes
    report = wa.fit(model, dataset, loss_fn, optimizer, scheduler=scheduler,
                    policy=wa.ScheduleResize({40: 4, 100: 3}), state=Tokens(),
                    callbacks=[CountTokens(), wa.EvalEvery(50, max_samples=512)],
                    config={"workers": 2, "max_workers": 4, "batch_size": 16,
                            "batch_rule": "global", "max_steps": 150})
    if report is not None:
        print(f"{report['steps']} steps, final workers {report['workers_final']}, test loss "
              f"{report['test_loss']:.3f}, tokens seen {report['user_state']['seen']}")
        print([(e["step"], e["kind"], e["detail"]) for e in report["events"]
               if e["kind"] in ("resize", "failure")])
