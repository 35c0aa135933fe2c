"""Independent numpy/scipy references shared by the solver tests."""

import keras
import numpy as np
import scipy.optimize

# Bound at import, before any test monkeypatches scipy.
scipy_lsa = scipy.optimize.linear_sum_assignment


def to_np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def check_permutation(columns, n):
    """Asserts an int32 (n,) permutation of range(n); returns it as numpy."""
    columns = to_np(columns)
    assert columns.dtype == np.int32, columns.dtype
    assert columns.shape == (n,), columns.shape
    np.testing.assert_array_equal(np.sort(columns), np.arange(n))
    return columns


def total_cost(cost, columns):
    """The float64 cost of the pairing `columns` of `cost`."""
    cost = np.asarray(cost, np.float64)
    return float(cost[np.arange(len(columns)), columns].sum())


def optimum(cost):
    """scipy's exact optimum of `cost`, in float64."""
    cost = np.asarray(cost, np.float64)
    rows, cols = scipy_lsa(cost)
    return float(cost[rows, cols].sum())
