"""Gavel's "LM (batch size B)" job: the 2-layer LSTM word language model on WikiText-2 as Gavel
trains it (workloads/pytorch/language_modeling of stanford-futuredata/gavel at c4fa400, main.py
defaults): embedding 200, 2 LSTM layers of 200 hidden units, dropout 0.2, untied decoder to the
vocabulary, bptt 35, cross-entropy, plain SGD (lr 20) after clipping the gradient norm to 0.25.
The vocabulary is WikiText-2's 33,278 words. Inputs are (batch, 35) token ids (the model runs
the LSTM sequence-first, as Gavel's does); the hidden state starts at zero (Gavel carries it
over, detached: the same memory).
"""

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, EMB, HID, LAYERS, BPTT, DROP, CLIP = 33278, 200, 200, 2, 35, 0.2, 0.25


class LSTMLanguageModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(DROP)
        self.encoder = nn.Embedding(VOCAB, EMB)
        self.rnn = nn.LSTM(EMB, HID, LAYERS, dropout=DROP)
        self.decoder = nn.Linear(HID, VOCAB)

    def forward(self, tokens):
        seq = tokens.t()                                   # (bptt, batch), as Gavel feeds it
        h0 = torch.zeros(LAYERS, seq.shape[1], HID)
        out, _ = self.rnn(self.drop(self.encoder(seq)), (h0, h0.clone()))
        return self.decoder(self.drop(out)).reshape(-1, VOCAB)


class ClippedSGD(torch.optim.SGD):
    """SGD that clips the gradient norm first (Gavel's clip_grad_norm_ before step)."""

    def step(self, closure=None):
        nn.utils.clip_grad_norm_([p for g in self.param_groups for p in g["params"]], CLIP)
        return super().step(closure)


model = LSTMLanguageModel
loss_fn = F.cross_entropy


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    words = torch.randint(0, VOCAB, (batch_size, BPTT + 1), generator=g)
    return words[:, :-1], words[:, 1:].t().reshape(-1)    # next word, sequence-first order


def optimizer(params):
    return ClippedSGD(params, lr=20.0)
