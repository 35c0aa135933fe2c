"""Pairwise distances between flattened rows."""

from keras import ops

from keras_immiscible.ops.validation import check_finite
from keras_immiscible.ops.validation import check_min_rank
from keras_immiscible.ops.validation import to_float_tensor
from keras_immiscible.utils.arguments import check_choice

METRICS = ("sq_l2", "l2")


def flatten_rows(x):
    """Reshapes (B, ...) to (B, prod(...))."""
    if len(x.shape) == 1:
        return ops.reshape(x, (-1, 1))
    feature_dims = 1
    for d in x.shape[1:]:
        feature_dims *= int(d)
    return ops.reshape(x, (-1, feature_dims))


def check_metric(metric):
    check_choice(metric, "metric", METRICS)


def _matching_features(x, y):
    if tuple(x.shape[1:]) != tuple(y.shape[1:]):
        raise ValueError(
            "`x` and `y` must have the same per-row shape, got "
            f"x: {tuple(x.shape)} and y: {tuple(y.shape)}."
        )


def pairwise_distance(x, y, metric="sq_l2"):
    """Distances between every row of `x` and every row of `y`.

    Rows are flattened, so images of shape (B, H, W, C) compare as vectors of
    H*W*C values.

    Args:
        x: floating tensor of shape (B, ...).
        y: floating tensor of shape (M, ...), with the same per-row shape.
        metric: `"sq_l2"` (squared Euclidean distance) or `"l2"` (Euclidean
            distance, the metric of the Immiscible Diffusion paper).

    Returns:
        A (B, M) tensor in the dtype of `x`.

    Example:

    >>> x = np.zeros((2, 3), "float32"); y = np.ones((4, 3), "float32")
    >>> keras_immiscible.ops.pairwise_distance(x, y).shape
    (2, 4)
    """
    check_metric(metric)
    x = to_float_tensor(x, "x")
    y = to_float_tensor(y, "y")
    check_min_rank(x, 2, "x", "a batch of rows")
    check_min_rank(y, 2, "y", "a batch of rows")
    _matching_features(x, y)
    check_finite(x, "x")
    check_finite(y, "y")
    sq = squared_distances(flatten_rows(x), flatten_rows(ops.cast(y, x.dtype)))
    return sq if metric == "sq_l2" else ops.sqrt(sq)


def squared_distances(x2, y2, cross=None):
    """(B, M) squared L2 distances of flat rows, from norms and `-2 x.y^T`."""
    if cross is None:
        cross = -2.0 * ops.matmul(x2, ops.transpose(y2))
    sq = (
        ops.sum(ops.square(x2), axis=1)[:, None]
        + ops.sum(ops.square(y2), axis=1)[None, :]
        + cross
    )
    return ops.maximum(sq, 0.0)


def assignment_cost(x, y, metric="sq_l2", quantize=False):
    """The (B, M) cost matrix the assignment solvers minimise.

    For `"sq_l2"` the row and column norm terms of the squared distance do
    not change which permutation is optimal, so the cost is the cheaper
    `-2 x.y^T` (one matmul). `"l2"` is the exact Euclidean distance.

    With `quantize=True` the cost is computed in float16, as in the paper's
    recipe; the inputs are scaled down first so that no intermediate can
    overflow float16 (a positive scale does not change the optimum).
    Inputs are assumed validated by the caller.
    """
    # float32 at least: float16 sums over large images overflow.
    x2 = flatten_rows(ops.cast(x, "float32"))
    y2 = flatten_rows(ops.cast(y, "float32"))
    if quantize:
        dims = float(x2.shape[1])
        bound = ops.maximum(ops.max(ops.abs(x2)), ops.max(ops.abs(y2)))
        bound = ops.maximum(bound, 1e-12)
        # Every squared difference is <= (2 * bound)^2, every product <=
        # bound^2: summed over `dims` they stay below 1e4 < float16 max.
        scale = ops.sqrt(1e4 / dims) / (2.0 * bound)
        x2 = ops.cast(x2 * scale, "float16")
        y2 = ops.cast(y2 * scale, "float16")
    cross = -2.0 * ops.matmul(x2, ops.transpose(y2))
    if metric == "sq_l2":
        return ops.cast(cross, "float32")
    return ops.cast(ops.sqrt(squared_distances(x2, y2, cross)), "float32")
