"""Shared, trained-once fixtures for the weft.serve tests (session scope: trained a single time)."""

import pytest
import torch

from weft.serve import DecomposeConfig, decompose
from weft.serve import testbed as tb


@pytest.fixture(scope="session")
def digits_sets():
    return tb.digits()


@pytest.fixture(scope="session")
def digits_model(digits_sets):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return tb.train(tb.digits_resnet(), digits_sets[0], epochs=6)


@pytest.fixture(scope="session")
def digits_bundle(digits_model, digits_sets, tmp_path_factory):
    """The trained digits model decomposed into 2 subnets of 5 classes, saved."""
    torch.set_num_threads(1)
    bundle = decompose(digits_model, *digits_sets, DecomposeConfig(groups=2, keep=0.5, steps=300))
    bundle.save(tmp_path_factory.mktemp("digits") / "bundle")
    return bundle


@pytest.fixture(scope="session")
def tiny_bundle(digits_sets, tmp_path_factory):
    """An untrained tiny model split into 3 subnets without fine-tuning: fast, for plumbing tests."""
    torch.manual_seed(0)
    model = tb.digits_resnet(width=4).eval()
    bundle = decompose(model, *digits_sets, DecomposeConfig(groups=3, keep=0.5, steps=0))
    bundle.save(tmp_path_factory.mktemp("tiny") / "bundle")
    return bundle
