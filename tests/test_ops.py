"""Tests of `keras_immiscible.ops` against independent references.

References: `scipy.optimize.linear_sum_assignment` on float64 copies of the
costs (the exact optimum), and numpy brute force for distances and nearest
candidates. Auction results are judged by the fraction of the achievable
reduction they miss: `(auction - optimum) / (identity - optimum)`.
"""

import importlib

import keras
import numpy as np
import pytest
import scipy.optimize
from assignment_references import check_permutation
from assignment_references import optimum
from assignment_references import to_np
from assignment_references import total_cost

from keras_immiscible import ops as kops

BACKEND = keras.backend.backend()
lsa_module = importlib.import_module("keras_immiscible.ops.linear_sum_assignment")

jax_only = pytest.mark.skipif(BACKEND != "jax", reason="jax.jit test")
tf_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function test")


# ---------------------------------------------------------------------------
# Helpers (independent numpy references).
# ---------------------------------------------------------------------------


def missed_fraction(cost, columns):
    """(total - optimum) / (identity - optimum): 0 is optimal."""
    opt = optimum(cost)
    gain = float(np.trace(np.asarray(cost, np.float64))) - opt
    assert gain > 0, "test problem where the identity is already optimal"
    return (total_cost(cost, columns) - opt) / gain


def np_pairwise(x, y, metric):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return sq if metric == "sq_l2" else np.sqrt(sq)


def digits_and_noise(digits, n, seed):
    x = digits[:n].reshape(n, -1)
    noise = np.random.default_rng(seed).normal(size=x.shape).astype("float32")
    return x, noise


# ---------------------------------------------------------------------------
# pairwise_distance
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["sq_l2", "l2"])
def test_pairwise_distance_matches_numpy(metric):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4, 4, 3)).astype("float32")
    y = rng.normal(size=(7, 4, 4, 3)).astype("float32")
    out = to_np(kops.pairwise_distance(x, y, metric=metric))
    assert out.shape == (5, 7)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np_pairwise(x, y, metric), rtol=1e-5, atol=1e-4)


def test_pairwise_distance_default_metric_is_squared():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 6)).astype("float32")
    y = rng.normal(size=(2, 6)).astype("float32")
    np.testing.assert_allclose(
        to_np(kops.pairwise_distance(x, y)),
        np_pairwise(x, y, "sq_l2"),
        rtol=1e-5,
        atol=1e-4,
    )


@pytest.mark.parametrize("metric", ["sq_l2", "l2"])
def test_pairwise_distance_to_itself_is_zero_and_never_negative(metric):
    # The `|x|^2 + |y|^2 - 2 x.y` form cancels on the diagonal; it must be
    # clamped at 0 (no negative squared distances, no NaN from the sqrt).
    rng = np.random.default_rng(2)
    x = (10.0 + rng.normal(size=(6, 4, 4, 3))).astype("float32")
    out = to_np(kops.pairwise_distance(x, x, metric=metric))
    assert np.all(np.isfinite(out))
    assert np.all(out >= 0.0)
    scale = np_pairwise(x, x, metric).max()
    assert np.all(np.diag(out) <= (1e-4 if metric == "sq_l2" else 3e-2) * scale)
    off = ~np.eye(6, dtype=bool)
    np.testing.assert_allclose(out[off], np_pairwise(x, x, metric)[off], rtol=1e-3)


def test_pairwise_distance_bad_inputs():
    x = np.zeros((3, 4, 4, 3), "float32")
    with pytest.raises(ValueError, match="`x` and `y`"):
        kops.pairwise_distance(x, np.zeros((3, 4, 4, 2), "float32"))
    with pytest.raises(ValueError, match="`x` and `y`"):
        kops.pairwise_distance(x, np.zeros((3, 48), "float32"))
    with pytest.raises(ValueError, match="metric"):
        kops.pairwise_distance(x, x, metric="l1")
    with pytest.raises(ValueError, match="metric"):
        kops.pairwise_distance(x, x, metric=None)
    with pytest.raises(ValueError, match="`x`"):
        kops.pairwise_distance(np.zeros((3,), "float32"), x)
    with pytest.raises(TypeError, match="`y`"):
        kops.pairwise_distance(x, np.zeros((3, 4, 4, 3), "int32"))
    bad = x.copy()
    bad[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="`x`"):
        kops.pairwise_distance(bad, x)
    bad[1, 2, 3, 0] = np.inf
    with pytest.raises(ValueError, match="`y`"):
        kops.pairwise_distance(x, bad)


# ---------------------------------------------------------------------------
# knn_select
# ---------------------------------------------------------------------------


def test_knn_select_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4, 4, 3)).astype("float32")
    candidates = rng.normal(size=(6, 5, 4, 4, 3)).astype("float32")
    # Pull one candidate of every row towards it, at a varying position, so
    # that the answer is not always the same index.
    for i in range(6):
        candidates[i, i % 5] = x[i] + 0.5 * candidates[i, i % 5]
    out = to_np(kops.knn_select(x, candidates))
    sq = ((candidates - x[:, None]).reshape(6, 5, -1).astype(np.float64) ** 2).sum(-1)
    expected = np.argmin(sq, axis=1)
    np.testing.assert_array_equal(expected, np.arange(6) % 5)
    assert out.dtype == np.int32 and out.shape == (6,)
    np.testing.assert_array_equal(out, expected)


def test_knn_select_random_rows_match_numpy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 8)).astype("float32")
    candidates = rng.normal(size=(64, 7, 8)).astype("float32")
    sq = ((candidates - x[:, None]).astype(np.float64) ** 2).sum(-1)
    np.testing.assert_array_equal(to_np(kops.knn_select(x, candidates)), sq.argmin(1))


def test_knn_select_docstring_example():
    x = np.zeros((1, 2), "float32")
    candidates = np.array([[[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]]], "float32")
    np.testing.assert_array_equal(to_np(kops.knn_select(x, candidates)), [1])


def test_knn_select_bad_inputs():
    x = np.zeros((4, 3, 3), "float32")
    candidates = np.zeros((4, 2, 3, 3), "float32")
    with pytest.raises(ValueError, match="batch size"):
        kops.knn_select(x, np.zeros((5, 2, 3, 3), "float32"))
    with pytest.raises(ValueError, match="`candidates`"):
        kops.knn_select(x, np.zeros((4, 2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="`candidates`"):
        kops.knn_select(x, np.zeros((4, 9), "float32"))
    with pytest.raises(TypeError, match="`x`"):
        kops.knn_select(x.astype("int32"), candidates)
    bad = x.copy()
    bad[2, 1, 1] = np.nan
    with pytest.raises(ValueError, match="`x`"):
        kops.knn_select(bad, candidates)
    bad = candidates.copy()
    bad[3, 1, 0, 2] = np.nan
    with pytest.raises(ValueError, match="`candidates`"):
        kops.knn_select(x, bad)


# ---------------------------------------------------------------------------
# linear_sum_assignment, solver="scipy" (exact)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 31, 64])
def test_scipy_solver_is_optimal_on_random_costs(n):
    rng = np.random.default_rng(100 + n)
    for cost in (
        rng.uniform(size=(n, n)).astype("float32"),
        rng.normal(scale=50.0, size=(n, n)).astype("float32"),
        # Many ties: integer-valued costs.
        rng.integers(0, 3, size=(n, n)).astype("float32"),
    ):
        columns = check_permutation(kops.linear_sum_assignment(cost, solver="scipy"), n)
        assert total_cost(cost, columns) == pytest.approx(
            optimum(cost), rel=1e-9, abs=1e-9
        )


def test_scipy_solver_is_the_default_and_docstring_example():
    cost = np.array([[4.0, 1.0], [2.0, 8.0]], "float32")
    np.testing.assert_array_equal(to_np(kops.linear_sum_assignment(cost)), [1, 0])
    np.testing.assert_array_equal(
        to_np(kops.linear_sum_assignment(cost, solver="auction")), [1, 0]
    )


def test_scipy_solver_unique_optimum_is_found_exactly():
    # A hidden permutation with a much cheaper diagonal: the unique optimum.
    rng = np.random.default_rng(7)
    n = 64
    perm = rng.permutation(n)
    cost = rng.uniform(1.0, 2.0, size=(n, n)).astype("float32")
    cost[np.arange(n), perm] = 0.0
    for solver in ("scipy", "auction"):
        columns = check_permutation(kops.linear_sum_assignment(cost, solver=solver), n)
        np.testing.assert_array_equal(columns, perm)


def test_scipy_solver_accepts_other_float_dtypes():
    rng = np.random.default_rng(8)
    cost = rng.uniform(size=(9, 9))
    for dtype in ("float16", "float64"):
        c = cost.astype(dtype)
        columns = check_permutation(kops.linear_sum_assignment(c), 9)
        assert total_cost(c, columns) == pytest.approx(optimum(c), rel=1e-6)


@pytest.mark.parametrize("metric", ["sq_l2", "l2"])
def test_scipy_solver_on_digits_vs_noise(digits, metric):
    x, noise = digits_and_noise(digits, 256, seed=11)
    cost = to_np(kops.pairwise_distance(x, noise, metric=metric))
    # The ops' cost is the brute-force one (up to float32 rounding)...
    np.testing.assert_allclose(cost, np_pairwise(x, noise, metric), rtol=1e-4)
    columns = check_permutation(kops.linear_sum_assignment(cost, solver="scipy"), 256)
    # ... and the solver reaches scipy's optimum on it.
    assert total_cost(cost, columns) == pytest.approx(optimum(cost), rel=1e-9)
    assert total_cost(cost, columns) < np.trace(cost.astype(np.float64))


# ---------------------------------------------------------------------------
# linear_sum_assignment, solver="auction"
# ---------------------------------------------------------------------------


def test_auction_near_optimal_on_20_random_uniform_costs():
    rng = np.random.default_rng(2024)
    worst = 0.0
    for _ in range(20):
        cost = rng.uniform(size=(256, 256)).astype("float32")
        columns = check_permutation(
            kops.linear_sum_assignment(cost, solver="auction"), 256
        )
        worst = max(worst, missed_fraction(cost, columns))
    assert worst <= 1e-3, worst


@pytest.mark.parametrize("metric", ["sq_l2", "l2"])
def test_auction_near_optimal_on_digits_vs_noise(digits, metric):
    x, noise = digits_and_noise(digits, 256, seed=12)
    cost = to_np(kops.pairwise_distance(x, noise, metric=metric))
    columns = check_permutation(kops.linear_sum_assignment(cost, solver="auction"), 256)
    assert missed_fraction(cost, columns) <= 1e-3


def test_auction_certified_on_shifted_costs():
    # Costs far from zero and negative: the auction reduces and rescales
    # them; its certified bound must hold in the original cost's terms.
    rng = np.random.default_rng(13)
    n = 64
    cost = (-1e4 + 300.0 * rng.normal(size=(n, n))).astype("float32")
    columns, info = kops.linear_sum_assignment(cost, solver="auction", return_info=True)
    columns = check_permutation(columns, n)
    assert bool(to_np(info["converged"]))
    assert missed_fraction(cost, columns) <= float(to_np(info["gap_bound"])) <= 1e-3


@pytest.mark.parametrize("n", [1, 2, 3])
def test_auction_tiny_problems(n):
    rng = np.random.default_rng(20 + n)
    for _ in range(5):
        cost = rng.uniform(size=(n, n)).astype("float32")
        columns, info = kops.linear_sum_assignment(
            cost, solver="auction", return_info=True
        )
        columns = check_permutation(columns, n)
        gain = np.trace(cost.astype(np.float64)) - optimum(cost)
        excess = total_cost(cost, columns) - optimum(cost)
        assert excess <= float(to_np(info["gap_bound"])) * gain + 1e-6
        assert excess <= 1e-3 * gain + 1e-6
        # Bound hit at once: still a permutation.
        check_permutation(
            kops.linear_sum_assignment(cost, solver="auction", max_rounds=1), n
        )


def test_auction_constant_cost_is_a_permutation():
    columns, info = kops.linear_sum_assignment(
        np.ones((64, 64), "float32"), solver="auction", return_info=True
    )
    check_permutation(columns, 64)
    assert float(to_np(info["gap_bound"])) == 0.0


def test_auction_with_tiny_max_rounds_is_still_a_permutation():
    rng = np.random.default_rng(30)
    for cost in (
        rng.uniform(size=(256, 256)).astype("float32"),
        rng.normal(size=(256, 256)).astype("float32"),
        np.ones((256, 256), "float32"),
    ):
        # No augmenting tail, three bidding rounds: the fill-in path.
        columns, info = kops.linear_sum_assignment(
            cost, solver="auction", max_rounds=3, tail_rows=0, return_info=True
        )
        columns = check_permutation(columns, 256)
        if np.ptp(cost) > 0:
            # Three rounds cannot seat 256 persons: the result is far from
            # optimal, and the certificate says so.
            missed = missed_fraction(cost, columns)
            assert missed > 1e-3
            assert not bool(to_np(info["converged"]))
            assert float(to_np(info["gap_bound"])) >= missed


def test_auction_tolerance_option_is_honoured():
    # A much finer tolerance than the default: met, and certified.
    rng = np.random.default_rng(31)
    n = 64
    cost = rng.uniform(size=(n, n)).astype("float32")
    fine, info = kops.linear_sum_assignment(
        cost, solver="auction", tolerance=1e-6, return_info=True
    )
    fine = check_permutation(fine, n)
    assert missed_fraction(cost, fine) <= float(to_np(info["gap_bound"])) + 1e-7
    assert missed_fraction(cost, fine) <= 1e-6


# ---------------------------------------------------------------------------
# Compiled functions (backend-specific)
# ---------------------------------------------------------------------------


@jax_only
def test_auction_inside_jax_jit_matches_eager(digits):
    import jax

    x, noise = digits_and_noise(digits, 128, seed=14)
    cost = to_np(kops.pairwise_distance(x, noise))
    solve = jax.jit(lambda c: kops.linear_sum_assignment(c, solver="auction"))
    jitted = check_permutation(solve(cost), 128)
    np.testing.assert_array_equal(
        jitted, to_np(kops.linear_sum_assignment(cost, solver="auction"))
    )
    assert missed_fraction(cost, jitted) <= 1e-3


@jax_only
def test_scipy_solver_inside_jax_jit_matches_scipy():
    import jax

    rng = np.random.default_rng(15)
    cost = rng.uniform(size=(40, 40)).astype("float32")
    solve = jax.jit(lambda c: kops.linear_sum_assignment(c, solver="scipy"))
    columns = check_permutation(solve(cost), 40)
    assert total_cost(cost, columns) == pytest.approx(optimum(cost), rel=1e-9)


@jax_only
def test_non_finite_cost_inside_jax_jit():
    import jax

    rng = np.random.default_rng(16)
    cost = rng.uniform(size=(12, 12)).astype("float32")
    auction = jax.jit(lambda c: kops.linear_sum_assignment(c, solver="auction"))
    for value in (np.nan, np.inf):
        bad = cost.copy()
        bad[3, 5] = value
        # Documented: the on-device solver leaves the noise unassigned.
        np.testing.assert_array_equal(to_np(auction(bad)), np.arange(12))
    # And a finite cost through the same compiled function is solved.
    assert missed_fraction(cost, check_permutation(auction(cost), 12)) <= 1e-3

    exact = jax.jit(lambda c: kops.linear_sum_assignment(c, solver="scipy"))
    bad = cost.copy()
    bad[3, 5] = np.nan
    with pytest.raises(Exception, match="NaN"):
        to_np(exact(bad))


@tf_only
def test_auction_inside_tf_function_xla_matches_eager(digits):
    import tensorflow as tf

    x, noise = digits_and_noise(digits, 128, seed=14)
    cost = to_np(kops.pairwise_distance(x, noise, metric="l2"))
    eager = to_np(kops.linear_sum_assignment(cost, solver="auction"))
    xla = tf.function(
        lambda c: kops.linear_sum_assignment(c, solver="auction"), jit_compile=True
    )
    np.testing.assert_array_equal(check_permutation(xla(cost), 128), eager)
    assert missed_fraction(cost, eager) <= 1e-3
    # A NaN reaching the compiled solver gives the identity (documented).
    bad = cost.copy()
    bad[0, 1] = np.nan
    np.testing.assert_array_equal(to_np(xla(bad)), np.arange(128))


@tf_only
def test_scipy_solver_inside_tf_function():
    import tensorflow as tf

    rng = np.random.default_rng(17)
    cost = rng.uniform(size=(40, 40)).astype("float32")

    xla = tf.function(
        lambda c: kops.linear_sum_assignment(c, solver="scipy"), jit_compile=True
    )
    with pytest.raises(RuntimeError, match="jit_compile=False") as info:
        xla(cost)
    assert "auction" in str(info.value)

    graph = tf.function(lambda c: kops.linear_sum_assignment(c, solver="scipy"))
    out = graph(cost)
    assert out.shape == (40,)  # static shape known to the graph
    columns = check_permutation(out, 40)
    assert total_cost(cost, columns) == pytest.approx(optimum(cost), rel=1e-9)

    bad = cost.copy()
    bad[0, 0] = np.nan
    with pytest.raises(Exception, match="NaN"):
        graph(bad)


# ---------------------------------------------------------------------------
# solver="scipy": the Sinkhorn warm start (prices computed where the cost is)
# ---------------------------------------------------------------------------


def warm_start_problems(digits, n):
    from test_auction import image_like

    rng = np.random.default_rng(60)
    noise = rng.standard_normal((n, 192)).astype("float32")
    x_digits = np.repeat(digits[rng.choice(len(digits), n)].reshape(n, 64), 3, axis=1)
    return {
        "digits vs noise": -2.0 * x_digits @ noise.T,
        # In [0, 1] with the full squared distance: large row/column offsets.
        "image-like [0, 1], full sq_l2": to_np(
            kops.pairwise_distance((image_like(rng, n) + 1) / 2, noise)
        ),
        "uniform": rng.uniform(size=(n, n)).astype("float32"),
    }


def test_scipy_warm_start_keeps_the_exact_optimum(digits):
    # n = 300 >= SCIPY_WARM_START_MIN_SIZE: the default call warm-starts.
    for name, cost in warm_start_problems(digits, 300).items():
        columns, info = kops.linear_sum_assignment(cost, return_info=True)
        columns = check_permutation(columns, 300)
        assert int(to_np(info["sinkhorn_iterations"])) == 8, name
        opt = optimum(cost)
        assert abs(total_cost(cost, columns) - opt) <= 1e-9 * abs(opt), name
        # Forced on any size and number of iterations, still exact.
        for n, iterations in ((5, 1), (40, 3), (300, 30)):
            sub = np.ascontiguousarray(cost[:n, :n])
            columns = kops.linear_sum_assignment(sub, sinkhorn_iterations=iterations)
            columns = check_permutation(columns, n)
            opt = optimum(sub)
            assert abs(total_cost(sub, columns) - opt) <= 1e-9 * abs(opt), name


def test_scipy_warm_start_defaults_by_size():
    rng = np.random.default_rng(61)
    small = rng.uniform(size=(lsa_module.SCIPY_WARM_START_MIN_SIZE - 1,) * 2)
    _, info = kops.linear_sum_assignment(small.astype("float32"), return_info=True)
    assert int(to_np(info["sinkhorn_iterations"])) == 0
    big = rng.uniform(size=(lsa_module.SCIPY_WARM_START_MIN_SIZE,) * 2)
    _, info = kops.linear_sum_assignment(
        big.astype("float32"), return_info=True, sinkhorn_iterations=0
    )
    assert int(to_np(info["sinkhorn_iterations"])) == 0


def test_scipy_receives_the_cost_shifted_by_the_prices(monkeypatch, digits):
    # What reaches scipy is reduce(cost + prices): the prices of
    # `warm_start_prices`, computed on the device, applied on the host.
    from keras_immiscible.ops.auction import warm_start_prices

    cost = warm_start_problems(digits, 256)["image-like [0, 1], full sq_l2"]
    seen = []
    real = scipy.optimize.linear_sum_assignment

    def spy(matrix):
        seen.append(np.array(matrix))
        return real(matrix)

    monkeypatch.setattr(scipy.optimize, "linear_sum_assignment", spy)
    kops.linear_sum_assignment(cost)
    prices = to_np(warm_start_prices(cost, 8)).astype(np.float64)
    expected = lsa_module.reduce_cost(np.asarray(cost, np.float64) + prices[None, :])
    # (compiled and eager float32 prices differ by rounding, ~1e-5)
    np.testing.assert_allclose(seen[0], expected, rtol=0, atol=1e-3)
    assert np.abs(seen[0] - lsa_module.reduce_cost(np.float64(cost))).max() > 1.0


def test_warm_start_prices_put_most_optimal_columns_at_the_row_minimum(digits):
    # The point of the prices: after them, most rows' cheapest column is
    # their optimal one (so scipy's augmenting paths are short). Measured
    # at n = 256: 45% with no Sinkhorn iteration, 83% after 8; prices of the
    # wrong sign give 25%.
    from test_auction import image_like

    from keras_immiscible.ops.auction import warm_start_prices

    rng = np.random.default_rng(3)
    x = image_like(rng, 256)
    noise = rng.standard_normal((256, 192)).astype("float32")
    cost = (-2.0 * x @ noise.T).astype("float32")
    _, best = scipy.optimize.linear_sum_assignment(cost.astype(np.float64))

    def agreement(iterations):
        prices = to_np(warm_start_prices(cost, iterations)).astype(np.float64)
        assert prices.shape == (256,) and np.all(np.isfinite(prices))
        return np.mean(np.argmin(cost + prices[None, :], axis=1) == best)

    assert agreement(8) >= 0.75
    assert agreement(8) >= agreement(0) + 0.2


@jax_only
def test_scipy_warm_start_inside_jax_jit(digits):
    import jax

    cost = warm_start_problems(digits, 256)["digits vs noise"]
    solve = jax.jit(lambda c: kops.linear_sum_assignment(c, return_info=True))
    columns, info = solve(cost)
    assert int(info["sinkhorn_iterations"]) == 8
    opt = optimum(cost)
    assert abs(total_cost(cost, check_permutation(columns, 256)) - opt) <= 1e-9 * abs(
        opt
    )


@tf_only
def test_scipy_warm_start_inside_tf_function(digits):
    import tensorflow as tf

    cost = warm_start_problems(digits, 256)["digits vs noise"]
    solve = tf.function(lambda c: kops.linear_sum_assignment(c))
    columns = check_permutation(solve(tf.constant(cost)), 256)
    opt = optimum(cost)
    assert abs(total_cost(cost, columns) - opt) <= 1e-9 * abs(opt)


# ---------------------------------------------------------------------------
# linear_sum_assignment: bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["scipy", "auction"])
def test_cost_bad_shape_and_dtype(solver):
    with pytest.raises(ValueError, match="`cost`"):
        kops.linear_sum_assignment(np.zeros((4,), "float32"), solver=solver)
    with pytest.raises(ValueError, match="`cost`"):
        kops.linear_sum_assignment(np.zeros((2, 4, 4), "float32"), solver=solver)
    with pytest.raises(ValueError, match="`cost`"):
        kops.linear_sum_assignment(np.zeros((3, 4), "float32"), solver=solver)
    with pytest.raises(ValueError, match="at least one row"):
        kops.linear_sum_assignment(np.zeros((0, 0), "float32"), solver=solver)
    for dtype in ("int32", "int64", "bool"):
        with pytest.raises(TypeError, match="`cost`"):
            kops.linear_sum_assignment(np.zeros((3, 3), dtype), solver=solver)
    with pytest.raises(TypeError, match="`cost`"):
        kops.linear_sum_assignment(None, solver=solver)
    with pytest.raises(TypeError, match="`cost`"):
        kops.linear_sum_assignment("cost", solver=solver)


@pytest.mark.parametrize("solver", ["scipy", "auction"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_cost_is_rejected_before_any_solver(monkeypatch, solver, value):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a non-finite cost reached the solver")

    monkeypatch.setattr(scipy.optimize, "linear_sum_assignment", must_not_run)
    monkeypatch.setattr(lsa_module, "auction_assignment", must_not_run)
    monkeypatch.setattr(lsa_module, "_scipy_columns", must_not_run)
    cost = np.random.default_rng(18).uniform(size=(6, 6)).astype("float32")
    cost[4, 1] = value
    with pytest.raises(ValueError, match="`cost`"):
        kops.linear_sum_assignment(cost, solver=solver)


def test_unknown_solver_and_options():
    cost = np.eye(3, dtype="float32")
    for solver in ("hungarian", "Scipy", None):
        with pytest.raises(ValueError, match="solver"):
            kops.linear_sum_assignment(cost, solver=solver)
    with pytest.raises(TypeError, match="scipy"):
        kops.linear_sum_assignment(cost, solver="scipy", max_rounds=3)
    with pytest.raises(ValueError, match="sinkhorn_iterations"):
        kops.linear_sum_assignment(cost, solver="scipy", sinkhorn_iterations=-1)
    with pytest.raises(TypeError, match="sinkhorn_iterations"):
        kops.linear_sum_assignment(cost, solver="scipy", sinkhorn_iterations=2.5)
