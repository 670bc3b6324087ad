"""Models as libraries build them, with no weft code: a Hugging Face GPT-2 from a config (no
weights, offline) and a ResNet laid out as torchvision's (conv1/bn1/layer1../fc, BatchNorm),
written here because torchvision's wheel does not import beside the pinned CPU torch."""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F


def hf_gpt2() -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0,
                     use_cache=False)  # training; a pipeline cut keeps no cache object
    return GPT2LMHeadModel(cfg)


def hf_llama() -> nn.Module:
    """A Hugging Face Llama from a config: nn.Linear projections (tensor-parallel rules
    apply), rotary embeddings computed once and passed to every layer as a tuple."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, use_cache=False,
                      initializer_range=0.1)  # at 0.02, this small a model's MLP gradients
    # are near-cancellations: tensor parallelism alone (no pipeline) then moved gate_proj
    # 1.6e-4 from one process after 3 Adam steps; at 0.1, 5e-7
    return LlamaForCausalLM(cfg)


def hf_loss(out, targets: torch.Tensor) -> torch.Tensor:
    """The model returns a CausalLMOutput; its logits against the next characters."""
    return F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten())


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return ResNet()


def without_key_bias(state: dict) -> dict:
    """GPT-2's fused q|k|v bias without its key third. The key bias cannot change attention
    (softmax ignores a per-row constant), so its gradient is rounding noise, which Adam turns
    into lr-sized steps in a direction that depends on the reduction order: it differs
    between any two ways of summing the same gradients. Everything else must match."""
    out = dict(state)
    for k, v in state.items():
        if k.endswith("attn.c_attn.bias"):
            q, _, val = v.chunk(3)
            out[k] = torch.cat([q, val])
    return out
