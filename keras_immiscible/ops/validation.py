"""Argument checks shared by the ops and the assigners.

Shapes and dtypes are checked always (they are static, even while tracing).
Values (NaN/inf) are checked whenever the tensor holds concrete values; inside
a compiled function the ops themselves keep non-finite values out of the
solvers (see `linear_sum_assignment`).
"""

import keras
import numpy as np

from keras_immiscible.backend import is_concrete


def to_float_tensor(x, name):
    """Converts `x` to a tensor and checks that it holds floating values."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"`{name}` must be a floating-point tensor, got {x!r}.")
    try:
        x = keras.ops.convert_to_tensor(x)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise TypeError(
            f"`{name}` must be a floating-point tensor; could not convert "
            f"a {type(x).__name__}: {e}"
        ) from e
    dtype = keras.backend.standardize_dtype(x.dtype)
    if "float" not in dtype:
        raise TypeError(
            f"`{name}` must have a floating-point dtype, got {dtype}. "
            f"Cast it first, e.g. `keras.ops.cast({name}, 'float32')`."
        )
    return x


def check_min_rank(x, rank, name, what):
    if len(x.shape) < rank:
        raise ValueError(
            f"`{name}` must have rank >= {rank} ({what}), got shape {tuple(x.shape)}."
        )


def check_rank(x, rank, name, what):
    if len(x.shape) != rank:
        raise ValueError(
            f"`{name}` must have rank {rank} ({what}), got shape {tuple(x.shape)}."
        )


def check_finite(x, name):
    """Raises `ValueError` if the concrete tensor `x` holds NaN or inf.

    The check runs where `x` lives: one boolean comes to the host, not the
    tensor (on a GPU, a sync but no copy of the batch). The values are
    counted only to word the error.
    """
    if not is_concrete(x):
        return
    if isinstance(x, np.ndarray):
        finite = bool(np.all(np.isfinite(x)))
    else:
        finite = bool(keras.ops.convert_to_numpy(keras.ops.all(keras.ops.isfinite(x))))
    if not finite:
        values = keras.ops.convert_to_numpy(x)
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise ValueError(
            f"`{name}` contains {bad} NaN or infinite value(s); the "
            "assignment is undefined for them. Check the inputs upstream."
        )
