"""The solvers' speed-ups keep their answers: the reduced host (scipy) path
and the Sinkhorn-warm-started auction with its certified gap bound.

Reference: `scipy.optimize.linear_sum_assignment` on float64 copies of the
*unreduced* costs.
"""

import importlib

import keras
import numpy as np
import pytest
import scipy.optimize

from keras_immiscible import ops as kops

BACKEND = keras.backend.backend()
lsa_module = importlib.import_module("keras_immiscible.ops.linear_sum_assignment")
scipy_lsa = scipy.optimize.linear_sum_assignment


def to_np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def check_permutation(columns, n):
    columns = to_np(columns)
    assert columns.dtype == np.int32, columns.dtype
    assert columns.shape == (n,), columns.shape
    np.testing.assert_array_equal(np.sort(columns), np.arange(n))
    return columns


def total_cost(cost, columns):
    cost = np.asarray(cost, np.float64)
    return float(cost[np.arange(len(columns)), columns].sum())


def optimum(cost):
    cost = np.asarray(cost, np.float64)
    rows, cols = scipy_lsa(cost)
    return float(cost[rows, cols].sum())


# ---------------------------------------------------------------------------
# Host path: the cost is reduced before scipy, the optimum is unchanged.
# ---------------------------------------------------------------------------


def test_reduce_cost_rows_and_columns_hold_a_zero():
    rng = np.random.default_rng(0)
    cost = rng.normal(size=(7, 7)) + 100.0 * rng.normal(size=(7, 1))
    reduced = lsa_module.reduce_cost(cost)
    assert reduced.min() == 0.0
    np.testing.assert_array_equal(reduced.min(axis=1) >= 0, True)
    np.testing.assert_array_equal(reduced.min(axis=0), 0.0)
    # Every permutation's total moves by the same constant.
    perms = [rng.permutation(7) for _ in range(5)]
    shifts = [total_cost(cost, p) - total_cost(reduced, p) for p in perms]
    np.testing.assert_allclose(shifts, shifts[0], rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 17, 128])
def test_reduced_host_path_returns_scipys_optimum_on_large_offsets(n):
    rng = np.random.default_rng(40 + n)
    # Integer-valued costs on top of large row, column and global offsets:
    # every sum is exact in float64, so the optimum must match exactly
    # (ties abound, so the permutation itself may differ).
    cost = (
        rng.integers(0, 50, size=(n, n))
        + rng.integers(-10**6, 10**6, size=(n, 1))
        + rng.integers(0, 10**5, size=(1, n))
        + 3 * 10**6
    ).astype(np.float64)
    columns = check_permutation(kops.linear_sum_assignment(cost), n)
    assert total_cost(cost, columns) == optimum(cost)
    # Float costs with large offsets (image-vs-noise-like, data in [0, 1]).
    x = rng.uniform(0.0, 1.0, size=(n, 96)).astype("float32")
    noise = rng.standard_normal((n, 96)).astype("float32")
    cost = (x * x).sum(1)[:, None] + (noise * noise).sum(1)[None] - 2 * x @ noise.T
    cost = cost.astype("float32") + 1e4
    columns = check_permutation(kops.linear_sum_assignment(cost), n)
    assert total_cost(cost, columns) == pytest.approx(optimum(cost), rel=1e-12)


def test_host_path_solves_the_reduced_cost(monkeypatch):
    seen = []

    def spy(cost):
        seen.append(np.array(cost))
        return scipy_lsa(cost)

    monkeypatch.setattr(scipy.optimize, "linear_sum_assignment", spy)
    cost = np.random.default_rng(1).uniform(5.0, 6.0, size=(16, 16))
    kops.linear_sum_assignment(cost.astype("float32"))
    (solved,) = seen
    np.testing.assert_array_equal(solved.min(axis=0), 0.0)
