"""Nearest-candidate selection (Improved Immiscible Diffusion)."""

from keras import ops

from keras_immiscible.ops.validation import check_finite
from keras_immiscible.ops.validation import check_min_rank
from keras_immiscible.ops.validation import to_float_tensor


def knn_select(x, candidates):
    """Index of the candidate nearest (in L2) to each row of `x`.

    Args:
        x: float tensor of shape (B, ...).
        candidates: float tensor of shape (B, k, ...): k candidates per row,
            with the same per-row shape as `x`.

    Returns:
        int32 tensor of shape (B,) with values in [0, k).

    Example:

    >>> x = np.zeros((1, 2), "float32")
    >>> candidates = np.array([[[3., 0.], [1., 1.], [0., 2.]]], "float32")
    >>> keras_immiscible.ops.knn_select(x, candidates)
    array([1], dtype=int32)
    """
    x = to_float_tensor(x, "x")
    candidates = to_float_tensor(candidates, "candidates")
    check_min_rank(x, 2, "x", "a batch of rows")
    check_min_rank(candidates, 3, "candidates", "(B, k, ...) candidates")
    if tuple(candidates.shape[2:]) != tuple(x.shape[1:]):
        raise ValueError(
            "`candidates` must have shape (B, k) + x.shape[1:], got "
            f"x: {tuple(x.shape)} and candidates: {tuple(candidates.shape)}."
        )
    if (
        x.shape[0] is not None
        and candidates.shape[0] is not None
        and x.shape[0] != candidates.shape[0]
    ):
        raise ValueError(
            "`x` and `candidates` must have the same batch size, got "
            f"{x.shape[0]} and {candidates.shape[0]}."
        )
    check_finite(x, "x")
    check_finite(candidates, "candidates")
    return ops.cast(ops.argmin(candidate_distances(x, candidates), axis=1), "int32")


def candidate_distances(x, candidates):
    """(B, k) squared L2 distances from each row to its candidates."""
    diff = candidates - ops.expand_dims(ops.cast(x, candidates.dtype), 1)
    return ops.sum(ops.square(diff), axis=tuple(range(2, len(diff.shape))))
