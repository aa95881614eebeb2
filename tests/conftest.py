"""Shared fixtures: the real byte-exact CIFAR-10 subset (via $SAMBOOK_DATA) and a small trained model.

Without data the session stops at once with the project's data error (never a pile of failures).
"""
from __future__ import annotations

import os

import pytest
import torch

from lib import data as D
from lib.config import make_config
from lib.errors import DataNotFoundError

# torch's thread count for the tests (SAMBOOK_TEST_THREADS=1 or 2 checks both code paths: reductions
# split differently across threads, so a test that holds only for one count is a bug in the test)
torch.set_num_threads(int(os.environ.get("SAMBOOK_TEST_THREADS", min(2, os.cpu_count() or 1))))


def pytest_sessionstart(session):
    if session.config.getoption("--nbval", default=False):
        return
    try:
        D.find_source("cifar10", None, ("npz",))
    except DataNotFoundError as e:
        pytest.exit(f"error: {e}", returncode=2)


@pytest.fixture(scope="session")
def exact():
    """The 6,102-image byte-exact CIFAR-10 subset, as uint8 tensors on the CPU."""
    return D.load_dataset("cifar10", sources=("npz",))


@pytest.fixture(scope="session")
def test_batch(exact):
    """200 test images (20 per class) as floats in [0, 1], and labels."""
    sub = exact.subset(test_per_class=20, seed=0)
    return D.to_float(sub.x_test), sub.y_test


def _train_smoke(cfg, data):
    """Train on the CPU at the smoke profile's thread count, as a smoke run does: the model is then the
    same whether a test file runs alone or in the suite (another file may change torch's threads)."""
    from lib.config import PROFILES
    from lib.runtime import threads
    from lib.train import train
    with threads(PROFILES[cfg.profile].cpu_threads):
        return train(cfg, data, device="cpu", progress=False, curve=(50, 1)).model.eval()


@pytest.fixture(scope="session")
def trained(exact):
    """A width-8 PreActResNet-18 trained with ST on the 5,085 exact training images (3 epochs)."""
    cfg = make_config("st", "smoke", train_per_class=None, epochs=3)
    return _train_smoke(cfg, exact.subset(test_per_class=5))


@pytest.fixture(scope="session")
def trained_other_seed(exact):
    """A second model (another seed, less training): the source of transfer attacks."""
    cfg = make_config("st", "smoke", seed=1, train_per_class=None, epochs=2)
    return _train_smoke(cfg, exact.subset(test_per_class=5))
