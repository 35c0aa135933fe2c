"""Shared fixtures of the ops and assignment tests."""

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()

if BACKEND == "torch":
    # The torch backend runs the auction's `while_loop` eagerly: ~600 rounds
    # of small (n, n) ops. On a small, shared CPU, torch's intra-op thread
    # pool turns each of those ops from microseconds into milliseconds
    # (threads waiting on each other while descheduled): one 256x256 solve
    # took ~37 s with 2 threads under load and ~0.9 s with 1. The ops are
    # far too small to gain from threads anyway.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled digits, (1797, 8, 8, 1) float32 in [-1, 1]."""
    from keras_immiscible.data import load_digits

    images = load_digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    return images * 2.0 - 1.0
