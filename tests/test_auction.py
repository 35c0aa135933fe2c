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
from assignment_references import check_permutation
from assignment_references import optimum
from assignment_references import scipy_lsa
from assignment_references import to_np
from assignment_references import total_cost

from keras_immiscible import ops as kops

BACKEND = keras.backend.backend()
lsa_module = importlib.import_module("keras_immiscible.ops.linear_sum_assignment")


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
        + rng.integers(-(10**6), 10**6, size=(n, 1))
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


# ---------------------------------------------------------------------------
# The auction's certificate: gap_bound is never below the true gap.
# ---------------------------------------------------------------------------


def true_gap(cost, columns):
    """(total - optimum) / (identity - optimum) against scipy, float64."""
    opt = optimum(cost)
    gain = float(np.trace(np.asarray(cost, np.float64))) - opt
    assert gain > 0
    return (total_cost(cost, columns) - opt) / gain


def image_like(rng, n, size=8):
    """Smooth random images in [-1, 1] (low-pass filtered noise), flat."""
    z = rng.standard_normal((n, size, size, 3))
    f = np.fft.fftfreq(size)
    k = np.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * 0.15**2))
    z = np.real(
        np.fft.ifft2(np.fft.fft2(z, axes=(1, 2)) * k[None, :, :, None], axes=(1, 2))
    )
    z /= np.abs(z).max(axis=(1, 2, 3), keepdims=True)
    return z.reshape(n, -1).astype("float32")


def problems(digits):
    rng = np.random.default_rng(50)
    n = 128
    noise = rng.standard_normal((n, 192)).astype("float32")
    x_digits = np.repeat(digits[rng.choice(len(digits), n)].reshape(n, 64), 3, axis=1)
    return {
        "uniform": rng.uniform(size=(n, n)).astype("float32"),
        "integer ties": rng.integers(0, 4, size=(n, n)).astype("float32"),
        "digits vs noise": -2.0 * x_digits @ noise.T,
        "image-like vs noise": -2.0 * image_like(rng, n) @ noise.T,
        # In [0, 1] with the full squared distance: large offsets.
        "image-like [0, 1], full sq_l2": to_np(
            kops.pairwise_distance((image_like(rng, n) + 1) / 2, noise)
        ),
    }


@pytest.mark.parametrize("tolerance", [1e-3, 0.05])
def test_gap_bound_is_never_below_the_true_gap(digits, tolerance):
    for name, cost in problems(digits).items():
        columns, info = kops.linear_sum_assignment(
            cost, solver="auction", tolerance=tolerance, return_info=True
        )
        columns = check_permutation(columns, len(cost))
        gap = true_gap(cost, columns)
        bound = float(to_np(info["gap_bound"]))
        assert gap <= bound + 1e-7, (name, gap, bound)
        assert bool(to_np(info["converged"])) == (bound <= tolerance), name
        assert bound <= tolerance, (name, bound)
        assert int(to_np(info["sinkhorn_iterations"])) == 64
        assert int(to_np(info["rounds"])) >= 1


def test_gap_bound_holds_for_a_cut_short_solve(digits):
    # Bidding cut short, no augmenting tail: a poor permutation, which the
    # bound must still cover (and not call converged).
    cost = problems(digits)["digits vs noise"]
    for rounds in (1, 2, 5):
        columns, info = kops.linear_sum_assignment(
            cost,
            solver="auction",
            max_rounds=rounds,
            tail_rows=0,
            sinkhorn_iterations=4,
            return_info=True,
        )
        columns = check_permutation(columns, len(cost))
        gap = true_gap(cost, columns)
        assert gap <= float(to_np(info["gap_bound"])) + 1e-7
        assert int(to_np(info["rounds"])) <= rounds


def test_without_warm_start_or_tail_still_certified(digits):
    cost = problems(digits)["image-like vs noise"]
    for kwargs in ({"sinkhorn_iterations": 0}, {"tail_rows": 0}):
        columns, info = kops.linear_sum_assignment(
            cost, solver="auction", return_info=True, **kwargs
        )
        columns = check_permutation(columns, len(cost))
        assert bool(to_np(info["converged"])), kwargs
        assert true_gap(cost, columns) <= float(to_np(info["gap_bound"])) + 1e-7


def test_info_api_and_default_call_unchanged():
    cost = np.random.default_rng(3).uniform(size=(32, 32)).astype("float32")
    plain = kops.linear_sum_assignment(cost, solver="auction")
    columns, info = kops.linear_sum_assignment(cost, solver="auction", return_info=True)
    np.testing.assert_array_equal(to_np(plain), to_np(columns))
    assert {"rounds", "sinkhorn_iterations", "gap_bound", "converged"} <= set(info)
    for value in info.values():
        assert to_np(value).shape == ()
    # scipy: exact, bound 0.
    columns, info = kops.linear_sum_assignment(cost, return_info=True)
    assert float(to_np(info["gap_bound"])) == 0.0 and bool(to_np(info["converged"]))
    assert total_cost(cost, check_permutation(columns, 32)) == pytest.approx(
        optimum(cost)
    )


@pytest.mark.skipif(BACKEND != "jax", reason="jax.jit test")
def test_certificate_inside_jax_jit(digits):
    import jax

    cost = problems(digits)["digits vs noise"]
    solve = jax.jit(
        lambda c: kops.linear_sum_assignment(c, solver="auction", return_info=True)
    )
    columns, info = solve(cost)
    columns = check_permutation(columns, len(cost))
    assert true_gap(cost, columns) <= float(info["gap_bound"]) + 1e-7 <= 1e-3 + 1e-7


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function test")
def test_certificate_inside_tf_function_xla(digits):
    import tensorflow as tf

    cost = problems(digits)["image-like vs noise"]
    solve = tf.function(
        lambda c: kops.linear_sum_assignment(c, solver="auction", return_info=True),
        jit_compile=True,
    )
    columns, info = solve(tf.constant(cost))
    columns = check_permutation(columns, len(cost))
    assert true_gap(cost, columns) <= float(info["gap_bound"]) + 1e-7 <= 1e-3 + 1e-7
