"""Linear sum assignment with a host (scipy) or an on-device solver."""

import numpy as np
import scipy.optimize
from keras import ops

from keras_immiscible.backend import compiled
from keras_immiscible.backend import host_call
from keras_immiscible.backend import is_concrete
from keras_immiscible.ops.auction import auction_assignment
from keras_immiscible.ops.auction import warm_start_prices
from keras_immiscible.ops.validation import check_finite
from keras_immiscible.ops.validation import check_rank
from keras_immiscible.ops.validation import to_float_tensor
from keras_immiscible.utils.arguments import check_choice
from keras_immiscible.utils.arguments import check_int

SOLVERS = ("scipy", "auction")


def check_solver(solver):
    check_choice(solver, "solver", SOLVERS)


def reduce_cost(cost):
    """`cost` minus its row minima, then minus its column minima (numpy).

    Every permutation's total changes by the same constant, so the optimal
    permutations are the same; but scipy's solver is much faster on the
    reduced matrix (its time depends on the offsets, not only on the
    optimum: 4x at B=1024 on image-vs-noise costs of data in [0, 1]).
    Every entry of the result is >= 0 and every row and column holds a 0.
    """
    cost = cost - np.min(cost, axis=1, keepdims=True)
    cost -= np.min(cost, axis=0, keepdims=True)
    return cost


def _scipy_columns(cost, prices=None):
    cost = np.asarray(cost, dtype=np.float64)
    if not np.all(np.isfinite(cost)):
        raise ValueError(
            "`cost` contains NaN or infinite values; refusing to pass them "
            "to scipy.optimize.linear_sum_assignment."
        )
    if prices is not None:
        prices = np.asarray(prices, dtype=np.float64)
        if np.all(np.isfinite(prices)):
            # A shift by column prices: the same optimal permutations.
            cost = cost + prices[None, :]
    rows, cols = scipy.optimize.linear_sum_assignment(reduce_cost(cost))
    out = np.empty(cost.shape[0], dtype=np.int32)
    out[rows] = cols
    return out


# scipy's solver starts from zero duals; below this size the warm start gained
# nothing (a scratch run at B = 64, 128; from 256 on see the host study).
SCIPY_WARM_START_MIN_SIZE = 256
SCIPY_SINKHORN_ITERATIONS = 8


def _exact_info(sinkhorn_iterations=0):
    """The `info` of an exact (scipy) solve."""
    return {
        "rounds": ops.convert_to_tensor(0, "int32"),
        "sinkhorn_iterations": ops.convert_to_tensor(sinkhorn_iterations, "int32"),
        "gap_bound": ops.convert_to_tensor(0.0, "float32"),
        "converged": ops.convert_to_tensor(True),
    }


def linear_sum_assignment(cost, solver="scipy", return_info=False, **solver_kwargs):
    """Minimum-cost assignment of rows to columns: a permutation.

    Args:
        cost: float tensor of shape (B, B); `cost[i, j]` is the cost of giving
            column `j` to row `i`.
        solver: `"scipy"`: exact, `scipy.optimize.linear_sum_assignment` on
            the host. Works eagerly on every backend and inside compiled
            functions through the backend's host callback (`jax.pure_callback`,
            `tf.numpy_function`); TensorFlow cannot compile a host call with
            XLA, so under `jit_compile=True` it raises a `RuntimeError` that
            says what to do. From B = 256 (`SCIPY_WARM_START_MIN_SIZE`) the
            cost is first shifted by column prices from 8 Sinkhorn
            iterations, computed where the cost lives (see
            `auction.warm_start_prices`): the same optimum, a 2.5-6.0x
            faster solve at B = 1024. `"auction"`: the epsilon-scaling auction of
            `keras_immiscible.ops.auction` (Sinkhorn warm start, then
            auction phases), written in `keras.ops`, which compiles with XLA
            and stays on the device. It stops once a dual certificate proves
            that its permutation misses at most `tolerance` (default 1e-3)
            of the reduction of the total cost that the optimum achieves
            over the identity (see `auction_assignment`).
        return_info: also return a dict of scalar tensors: `rounds` (bidding
            rounds), `sinkhorn_iterations`, `gap_bound` (an upper bound of
            `(total - optimum) / (identity - optimum)`, certified on the
            device) and `converged` (`gap_bound <= tolerance`). The scipy
            solver is exact: 0 rounds, bound 0.
        **solver_kwargs: options of the auction (`tolerance`,
            `sinkhorn_iterations`, `initial_epsilon`, `epsilon`, `scaling`,
            `max_rounds`, `unroll`, `tail_size`); scipy takes only
            `sinkhorn_iterations` (its warm start; 0: none).

    Returns:
        int32 tensor of shape (B,): the column assigned to each row. Always a
        permutation of `range(B)`. With `return_info=True`, the pair
        `(columns, info)`.

    Raises:
        TypeError: if `cost` is not floating point.
        ValueError: if `cost` is not square (B, B), or holds NaN/inf.

    Inside a compiled function values cannot be inspected while tracing: the
    scipy solver then checks them on the host (and raises from there); the
    auction, which cannot raise on the device, returns the identity
    permutation for a cost with non-finite values, i.e. it leaves the noise
    unassigned rather than acting on garbage.

    Example:

    >>> cost = np.array([[4., 1.], [2., 8.]], "float32")
    >>> keras_immiscible.ops.linear_sum_assignment(cost)
    array([1, 0], dtype=int32)
    """
    check_solver(solver)
    cost = to_float_tensor(cost, "cost")
    check_rank(cost, 2, "cost", "a (B, B) cost matrix")
    n, m = cost.shape
    if n == 0:
        raise ValueError("`cost` must have at least one row, got shape (0, 0).")
    if n is not None and m is not None and n != m:
        raise ValueError(
            "`cost` must be square (B, B): one column per row; got shape "
            f"{tuple(cost.shape)}."
        )
    check_finite(cost, "cost")
    if solver == "scipy":
        iterations = _scipy_options(n, solver_kwargs)
        args = [cost]
        if iterations:
            args.append(_prices(cost, iterations))
        columns = host_call(
            _scipy_columns, args, (n,), "int32", name="linear_sum_assignment"
        )
        return (columns, _exact_info(iterations)) if return_info else columns
    n = ops.shape(cost)[0] if n is None else n
    if is_concrete(cost):
        key = ("auction", tuple(sorted(solver_kwargs.items())))
        solve = compiled(
            lambda c: auction_assignment(c, return_info=True, **solver_kwargs),
            key,
        )
        columns, info = solve(cost)
    else:
        finite = ops.all(ops.isfinite(cost))
        safe_cost = ops.where(ops.isfinite(cost), cost, 0.0)
        columns, info = auction_assignment(safe_cost, return_info=True, **solver_kwargs)
        identity = ops.arange(n, dtype="int32")
        columns = ops.where(finite, columns, identity)
        info = dict(info)
        info["gap_bound"] = ops.where(finite, info["gap_bound"], float("inf"))
        info["converged"] = ops.logical_and(finite, info["converged"])
    return (columns, info) if return_info else columns


def _scipy_options(n, solver_kwargs):
    """The warm start's Sinkhorn iterations for scipy (0: none)."""
    options = dict(solver_kwargs)
    iterations = options.pop("sinkhorn_iterations", None)
    if options:
        raise TypeError(
            f"solver='scipy' takes only `sinkhorn_iterations`, got {sorted(options)}."
        )
    if iterations is None:
        small = n is None or n < SCIPY_WARM_START_MIN_SIZE
        return 0 if small else SCIPY_SINKHORN_ITERATIONS
    return check_int(iterations, "sinkhorn_iterations", minimum=0)


def _prices(cost, iterations):
    """Warm-start column prices, computed where `cost` lives."""
    if is_concrete(cost):
        solve = compiled(
            lambda c: warm_start_prices(c, iterations), ("warm_start", iterations)
        )
        return solve(cost)
    return warm_start_prices(cost, iterations)
