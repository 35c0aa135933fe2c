"""Checks of public arguments: ints, numbers, flags, choices, seeds.

The one home of "must be a positive int", "must be a number in [0, 1)" and
the like, so that every argument of the library is refused the same way.
Each check returns the value in its plain Python type (`int`, `float`,
`bool`) and raises, naming the argument, what it expects and what it got:

    `batch_size` must be a positive int, got 0.

A value of the wrong type raises `ArgumentTypeError`, a `TypeError` that is
also a `ValueError` (some checks of the library raised the one, some the
other, for a wrongly typed argument: code catching either keeps working); a
value of the right type out of its range raises a `ValueError`.
"""

import math
import numbers

import numpy as np


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (both a `TypeError` and a
    `ValueError`)."""


def check_int(value, name, *, minimum=None, allow_none=False):
    """An int (not a bool), optionally at least `minimum`.

    Args:
        value: the argument; Python and numpy integers are accepted.
        name: the argument's name, for the message.
        minimum: None, or the smallest value allowed.
        allow_none: accept None (returned as is).

    Returns:
        `int(value)`, or None.

    Raises:
        ArgumentTypeError: `value` is not an int.
        ValueError: `value` is smaller than `minimum`.
    """
    if value is None and allow_none:
        return None
    expected = {None: "an int", 0: "a non-negative int", 1: "a positive int"}
    expected = expected.get(minimum, f"an int >= {minimum}")
    if allow_none:
        expected = f"None or {expected}"
    message = f"`{name}` must be {expected}, got {value!r}."
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(message)
    if minimum is not None and value < minimum:
        raise ValueError(message)
    return int(value)


def check_positive_int(value, name, *, allow_none=False):
    """An int >= 1: `check_int(value, name, minimum=1)`."""
    return check_int(value, name, minimum=1, allow_none=allow_none)


def check_number(
    value,
    name,
    *,
    low=None,
    high=None,
    low_open=False,
    high_open=False,
    allow_none=False,
):
    """A finite real number (not a bool), optionally in a range.

    Args:
        value: the argument; Python and numpy ints and floats are accepted.
        name: the argument's name, for the message.
        low, high: None, or the bounds of the range.
        low_open, high_open: exclude the bound itself (`> low`, `< high`).
        allow_none: accept None (returned as is).

    Returns:
        `float(value)`, or None.

    Raises:
        ArgumentTypeError: `value` is not a number.
        ValueError: `value` is NaN, infinite or out of the range.
    """
    if value is None and allow_none:
        return None
    if low is not None and high is not None:
        expected = (
            f"a number in {'(' if low_open else '['}{low:g}, "
            f"{high:g}{')' if high_open else ']'}"
        )
    elif low is not None:
        expected = f"a number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        expected = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        expected = "a finite number"
    if allow_none:
        expected = f"None or {expected}"
    message = f"`{name}` must be {expected}, got {value!r}."
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(message)
    value = float(value)
    if (
        not math.isfinite(value)
        or (low is not None and (value <= low if low_open else value < low))
        or (high is not None and (value >= high if high_open else value > high))
    ):
        raise ValueError(message)
    return value


def check_probability(value, name, *, allow_one=True):
    """A number in [0, 1] (or [0, 1) with `allow_one=False`)."""
    return check_number(value, name, low=0, high=1, high_open=not allow_one)


def check_bool(value, name):
    """True or False (Python or numpy bools; not 0 or 1)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"`{name}` must be True or False, got {value!r}.")
    return bool(value)


def check_choice(value, name, choices):
    """One of `choices`: equal to one and of its kind (bool, int, float,
    str: numpy scalars count as their Python kind), so `16.0` is not `16`,
    `True` is not `1`, and an array is never a choice."""
    if not any(
        value is choice or (_kind(value) == _kind(choice) and value == choice)
        for choice in choices
    ):
        raise ValueError(f"`{name}` must be one of {tuple(choices)!r}, got {value!r}.")
    return value


def check_callable(value, name):
    """A callable (returned as is)."""
    if not callable(value):
        raise ArgumentTypeError(f"`{name}` must be callable, got {value!r}.")
    return value


def check_seed(value, name="seed"):
    """None or an int seed (`check_int(value, name, allow_none=True)`)."""
    return check_int(value, name, allow_none=True)


def _kind(value):
    for kind in ((bool, np.bool_), numbers.Integral, numbers.Real, str):
        if isinstance(value, kind):
            return kind
    return type(value)
