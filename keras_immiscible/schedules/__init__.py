"""Continuous-time noise schedules (`t = 0` clean, `t = 1` noisiest)."""

import keras

from keras_immiscible.schedules.cosine import CosineSchedule
from keras_immiscible.schedules.discrete import DiscreteSchedule
from keras_immiscible.schedules.discrete import IDDPMCosine
from keras_immiscible.schedules.discrete import LinearBeta
from keras_immiscible.schedules.flow import LinearInterpolation
from keras_immiscible.schedules.schedule import Schedule

_ALIASES = {
    "cosine": CosineSchedule,
    "linear_beta": LinearBeta,
    "iddpm_cosine": IDDPMCosine,
    "linear_interpolation": LinearInterpolation,
}

__all__ = [
    "CosineSchedule",
    "DiscreteSchedule",
    "IDDPMCosine",
    "LinearBeta",
    "LinearInterpolation",
    "Schedule",
    "get",
    "serialize",
    "deserialize",
]


def serialize(schedule):
    """Returns the Keras serialization dict of a `Schedule`.

    Args:
        schedule: a `Schedule` instance.

    Returns:
        A JSON-compatible dict, accepted by `deserialize()` and `get()`.
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(
            "`schedule` must be a `keras_immiscible.schedules.Schedule`. "
            f"Received: schedule={schedule!r}"
        )
    return keras.saving.serialize_keras_object(schedule)


def deserialize(config, custom_objects=None):
    """Creates a `Schedule` from the output of `serialize()`.

    Args:
        config: dict produced by `serialize()` (or a plain
            `{"class_name": ..., "config": ...}` dict naming a built-in
            schedule).
        custom_objects: optional dict of extra classes to look up.

    Returns:
        A `Schedule` instance.
    """
    module_objects = {cls.__name__: cls for cls in _ALIASES.values()}
    module_objects["Schedule"] = Schedule
    module_objects["DiscreteSchedule"] = DiscreteSchedule
    schedule = keras.saving.deserialize_keras_object(
        config, module_objects=module_objects, custom_objects=custom_objects
    )
    if not isinstance(schedule, Schedule):
        raise ValueError(
            "The configuration does not describe a `Schedule`. "
            f"Received: config={config!r}"
        )
    return schedule


def get(identifier):
    """Retrieves a `Schedule` from an identifier.

    Args:
        identifier: `None` (the default `CosineSchedule()`), a string
            (`"cosine"`, `"linear_beta"`, `"iddpm_cosine"` or
            `"linear_interpolation"`, giving the class with its default
            arguments), a dict produced by `serialize()`, or a `Schedule`
            instance (returned as is).

    Returns:
        A `Schedule` instance.

    Example:

    ```python
    schedule = keras_immiscible.schedules.get("cosine")
    config = keras_immiscible.schedules.serialize(schedule)
    same = keras_immiscible.schedules.get(config)
    ```
    """
    if identifier is None:
        return CosineSchedule()
    if isinstance(identifier, Schedule):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str) and identifier.lower() in _ALIASES:
        return _ALIASES[identifier.lower()]()
    raise ValueError(
        "Could not interpret the schedule identifier. Expected None, one of "
        f"{sorted(_ALIASES)}, a dict produced by "
        "`keras_immiscible.schedules.serialize()` or a `Schedule` instance. "
        f"Received: {identifier!r}"
    )
