"""The GPT example (examples/gpt.py) as a complete model spec for adaptive training: its
network, data and loss, with AdamW and a linear warm-up of the learning rate.

    weft train --policy examples/elastic.yaml --model examples/gpt_spec.py
"""

import torch

from gpt import CONFIG, dataset, example_input, loss_fn, model  # noqa: F401 - the spec's names


def optimizer(params):
    return torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01)


def warmup(step: int) -> float:
    return min(1.0, (step + 1) / 20)


def scheduler(opt):
    """Stepped once per training step."""
    return torch.optim.lr_scheduler.LambdaLR(opt, warmup)
