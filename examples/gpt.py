"""A small decoder-only transformer (GPT), trained as a character-level language model on
the Python standard library's own source files. Plain PyTorch, no parallel code inside:
a weft plan distributes it (DP, FSDP, TP and their combinations).

    import weft, gpt                              # this file (examples/ on the path)
    model = weft.parallelize(gpt.model(), "plan.yaml")
    loss = gpt.loss_fn(model(x), y); loss.backward(); opt.step()

The model-spec contract: `model(**config)` builds the network (seeded, so every rank
builds the same weights), `dataset()` returns (train, test), `loss_fn(logits, targets)`,
`example_input(batch)`. Tensor-parallel plans split `q`, `k`, `v` and `mlp.fc`
column-wise, `proj` and `mlp.proj` row-wise, and divide each attention's `n_head`
by the tp degree (the forward reads `self.n_head`, so each rank runs its own heads).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

CONFIG = {"vocab": 128, "block": 32, "d_model": 64, "n_head": 4, "n_layer": 2, "mlp_ratio": 4,
          "dropout": 0.0}


class Attention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float):
        super().__init__()
        assert d_model % n_head == 0, (d_model, n_head)
        self.n_head, self.head_dim, self.dropout = n_head, d_model // n_head, dropout
        # No bias on q, k, v (as in LLaMA): a key bias cannot change attention (softmax
        # ignores a per-row constant), so its gradient would be pure rounding noise.
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = (lin(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
                   for lin in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: int):
        super().__init__()
        self.fc = nn.Linear(d_model, ratio * d_model)
        self.proj = nn.Linear(ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_head, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, d_model: int, n_head: int, n_layer: int,
                 mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.block = block
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(block, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head, mlp_ratio, dropout)
                                    for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def model(seed: int = 0, **config) -> GPT:
    """A GPT with CONFIG overridden by `config`; the same seed builds the same weights."""
    unknown = set(config) - set(CONFIG)
    if unknown:
        raise TypeError(f"unknown GPT config key(s) {sorted(unknown)}; known: {sorted(CONFIG)}")
    torch.manual_seed(seed)
    return GPT(**{**CONFIG, **config})


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def example_input(batch_size: int, block: int = CONFIG["block"]) -> torch.Tensor:
    return torch.randint(0, CONFIG["vocab"], (batch_size, block))


def corpus(max_chars: int = 400_000) -> bytes:
    """The first `max_chars` characters of the standard library's top-level .py files, in
    name order, as ASCII (anything else becomes '?'): on every machine, nothing downloaded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, n = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace").encode("ascii", "replace")
        parts.append(text)
        n += len(text)
        if n >= max_chars:
            break
    return b"".join(parts)[:max_chars]


class CharWindows(torch.utils.data.Dataset):
    """Non-overlapping windows: item i is (text[iT : iT+T], text[iT+1 : iT+T+1])."""

    def __init__(self, data: torch.Tensor, block: int):
        self.data, self.block = data, block

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.block

    def __getitem__(self, i: int):
        lo = i * self.block
        chunk = self.data[lo:lo + self.block + 1].long()
        return chunk[:-1], chunk[1:]


def dataset(block: int = CONFIG["block"], max_chars: int = 400_000, test_fraction: float = 0.1):
    """(train, test) character windows; the test set is the corpus's last `test_fraction`."""
    data = torch.frombuffer(bytearray(corpus(max_chars)), dtype=torch.uint8)
    cut = int(len(data) * (1 - test_fraction))
    return CharWindows(data[:cut], block), CharWindows(data[cut:], block)
