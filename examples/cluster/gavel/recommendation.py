"""Gavel's "Recommendation (batch size B)" job: the autoencoder recommender on MovieLens-20M as
Gavel trains it (workloads/pytorch/recommendation of stanford-futuredata/gavel at c4fa400,
train.py and recoder/nn.py): recoder's DynamicAutoencoder with one hidden layer of 200 units,
tanh, input dropout (noise) 0.5 after L2-normalising each row, item embeddings as the encoder
and decoder weights (each items x 200, untied) with biases, logistic loss
(BCEWithLogits, summed), Adam lr 1e-3, one row per user.

Assumption: every batch has all N_ITEMS columns. recoder's mini-batch negative sampling keeps
only the items some user of the batch interacted with, so a real batch has fewer columns, the
more so the smaller the batch: these profiles are upper bounds. N_ITEMS is the item count of
ML-20M after the usual preprocessing (movies rated >= 3.5 by users with >= 5 such ratings).
"""

import torch
import torch.nn.functional as F
from torch import nn

N_ITEMS, HIDDEN, NOISE = 20108, 200, 0.5


class DenseAutoencoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Parameter(torch.empty(N_ITEMS, HIDDEN))
        self.enc_bias = nn.Parameter(torch.zeros(HIDDEN))
        self.dec = nn.Parameter(torch.empty(N_ITEMS, HIDDEN))
        self.dec_bias = nn.Parameter(torch.zeros(N_ITEMS))
        nn.init.xavier_uniform_(self.enc)
        nn.init.xavier_uniform_(self.dec)
        self.noise = nn.Dropout(NOISE)

    def forward(self, ratings):
        z = self.noise(F.normalize(ratings, p=2, dim=1))
        z = torch.tanh(F.linear(z, self.enc.t(), self.enc_bias))
        return F.linear(z, self.dec, self.dec_bias)


model = DenseAutoencoder


def loss_fn(logits, target):
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum")


def example_batch(batch_size: int):
    """Binary user x item interactions, about 1% dense (the values do not change the memory)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch_size, N_ITEMS, generator=g) < 0.01).float()
    return x, x.clone()


def optimizer(params):
    return torch.optim.Adam(params, lr=1e-3)
