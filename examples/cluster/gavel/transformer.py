"""Gavel's "Transformer (batch size B)" job: the base "Attention is all you need" model for
Multi30k translation as Gavel trains it (workloads/pytorch/translation of
stanford-futuredata/gavel at c4fa400, train.py defaults and its job command): 6 encoder and 6
decoder layers, d_model 512, 8 heads of d_k = d_v = 64, inner 2048, dropout 0.1, sinusoidal
positions for sequences up to 52 tokens (preprocess max_len 50 + BOS/EOS), the target embedding
shared with the output projection (-proj_share_weight, logits scaled by d_model^-0.5),
cross-entropy summed over non-padding tokens, Adam betas (0.9, 0.98), eps 1e-9.

Assumptions (not in Gavel's repo, they come from the preprocessed data): vocabularies of
SRC_VOCAB and TGT_VOCAB words (Multi30k, lowercased, words seen more than 5 times) and batches
padded to SEQ_LEN tokens (a batch pads to its longest sentence; Multi30k sentences average
about 13 words). Inputs pack source and target token ids as (batch, 2, SEQ_LEN).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

SRC_VOCAB, TGT_VOCAB, SEQ_LEN, MAX_LEN = 3000, 3800, 32, 52
PAD, BOS, EOS = 0, 2, 3
D, HEADS, DK, INNER, LAYERS, DROP = 512, 8, 64, 2048, 6, 0.1


def _sinusoids(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    rate = torch.pow(10000.0, -torch.arange(0, d, 2, dtype=torch.float64) / d)
    table = torch.zeros(n, d, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = torch.sin(pos * rate), torch.cos(pos * rate)
    table[0] = 0  # position 0 is padding
    return table.float()


class Attention(nn.Module):
    """Multi-head attention with its residual and layer norm (post-norm, as the base model)."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(D, HEADS * DK) for _ in range(3))
        self.fc, self.norm, self.drop = nn.Linear(HEADS * DK, D), nn.LayerNorm(D), nn.Dropout(DROP)

    def forward(self, x, mem, mask):
        b, lq, lk = x.shape[0], x.shape[1], mem.shape[1]
        q = self.q(x).view(b, lq, HEADS, DK).transpose(1, 2)
        k = self.k(mem).view(b, lk, HEADS, DK).transpose(1, 2)
        v = self.v(mem).view(b, lk, HEADS, DK).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(DK)
        att = self.drop(att.masked_fill(mask[:, None], float("-inf")).softmax(-1))
        out = (att @ v).transpose(1, 2).reshape(b, lq, HEADS * DK)
        return self.norm(self.drop(self.fc(out)) + x)


class FeedForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1, self.w2 = nn.Linear(D, INNER), nn.Linear(INNER, D)
        self.norm, self.drop = nn.LayerNorm(D), nn.Dropout(DROP)

    def forward(self, x):
        return self.norm(self.drop(self.w2(F.relu(self.w1(x)))) + x)


class EncoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.att, self.ff = Attention(), FeedForward()

    def forward(self, x, keep, mask):
        return self.ff(self.att(x, x, mask) * keep) * keep


class DecoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_att, self.src_att, self.ff = Attention(), Attention(), FeedForward()

    def forward(self, y, mem, keep, self_mask, src_mask):
        y = self.self_att(y, y, self_mask) * keep
        y = self.src_att(y, mem, src_mask) * keep
        return self.ff(y) * keep


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.src_emb = nn.Embedding(SRC_VOCAB, D, padding_idx=PAD)
        self.tgt_emb = nn.Embedding(TGT_VOCAB, D, padding_idx=PAD)
        self.register_buffer("pos_table", _sinusoids(MAX_LEN + 1, D), persistent=False)
        self.enc = nn.ModuleList(EncoderLayer() for _ in range(LAYERS))
        self.dec = nn.ModuleList(DecoderLayer() for _ in range(LAYERS))

    def _embed(self, emb, seq):
        pos = torch.where(seq != PAD, torch.arange(1, seq.shape[1] + 1).expand_as(seq), 0)
        return emb(seq) + self.pos_table[pos]

    def forward(self, pair):
        src, tgt = pair[:, 0], pair[:, 1, :-1]
        src_pad = (src == PAD)[:, None, :]                               # (b, 1, ls)
        x = self._embed(self.src_emb, src)
        keep = (src != PAD)[..., None].float()
        for layer in self.enc:
            x = layer(x, keep, src_pad.expand(-1, src.shape[1], -1))
        lt = tgt.shape[1]
        future = torch.ones(lt, lt, dtype=torch.bool).triu(1)
        self_mask = (tgt == PAD)[:, None, :] | future
        y = self._embed(self.tgt_emb, tgt)
        keep = (tgt != PAD)[..., None].float()
        for layer in self.dec:
            y = layer(y, x, keep, self_mask, src_pad.expand(-1, lt, -1))
        logits = F.linear(y, self.tgt_emb.weight) * D ** -0.5   # shared projection
        return logits.reshape(-1, TGT_VOCAB)


model = Transformer


def loss_fn(logits, gold):
    return F.cross_entropy(logits, gold, ignore_index=PAD, reduction="sum")


def example_batch(batch_size: int):
    """Token ids (batch, 2, SEQ_LEN): BOS, words, EOS, then padding; each sentence between half
    and all of SEQ_LEN long (the longest fills it), and the target ids shifted by one as labels."""
    g = torch.Generator().manual_seed(0)
    pair = torch.full((batch_size, 2, SEQ_LEN), PAD, dtype=torch.long)
    for side, vocab in ((0, SRC_VOCAB), (1, TGT_VOCAB)):
        lens = torch.randint(SEQ_LEN // 2, SEQ_LEN + 1, (batch_size,), generator=g)
        lens[0] = SEQ_LEN
        for i, n in enumerate(lens.tolist()):
            pair[i, side, 0], pair[i, side, n - 1] = BOS, EOS
            pair[i, side, 1:n - 1] = torch.randint(4, vocab, (n - 2,), generator=g)
    return pair, pair[:, 1, 1:].reshape(-1)


def optimizer(params):
    return torch.optim.Adam(params, betas=(0.9, 0.98), eps=1e-9)
