"""Balanced class grouping and temperature scaling against known answers."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.serve import ServeError
from weft.serve.calibrate import expected_calibration_error, fit_temperature
from weft.serve.grouping import balanced_kmeans


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 12), data=st.data())
def test_groups_partition_the_classes_in_balanced_sizes(n, data):
    g = data.draw(st.integers(1, n))
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    sets = balanced_kmeans(rng.normal(size=(n, 3)), g, seed=0)
    assert sorted(c for s in sets for c in s) == list(range(n))
    sizes = [len(s) for s in sets]
    assert len(sets) == g and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_separated_clusters_are_recovered():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10]])
    members = [[1, 4, 7], [0, 5, 8], [2, 3, 6]]
    v = np.zeros((9, 2))
    for c, idx in zip(centers, members):
        v[idx] = c + rng.normal(scale=0.5, size=(3, 2))
    assert balanced_kmeans(v, 3) == sorted(sorted(m) for m in members)


def test_too_many_groups_is_named():
    with pytest.raises(ServeError, match="groups=4: must be between 1 and the model's 3 classes"):
        balanced_kmeans(np.zeros((3, 2)), 4)


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_temperature_recovers_the_generating_one(true_t):
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(6000, 4, generator=gen)
    labels = torch.multinomial(torch.softmax(logits / true_t, 1), 1, generator=gen).squeeze(1)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.08)
    before = expected_calibration_error(torch.softmax(logits, 1), labels)
    after = expected_calibration_error(torch.softmax(logits / t, 1), labels)
    assert after < before and after < 0.03


def test_separable_data_does_not_drive_the_temperature_to_its_bound():
    logits = torch.randn(200, 3, generator=torch.Generator().manual_seed(1))
    t = fit_temperature(logits, logits.argmax(1))  # every answer right: likelihood rises as T -> 0
    assert 0.05 < t < 1
