"""Samplers generating data from a trained denoiser or flow.

Every sampler has `sample(fn, initial_noise, schedule, steps, seed=None)` and
a class attribute `kind` that says what `fn(x_t, t)` must return:
`"denoise"` (`DDIM`, `DDPM`): the pair `(pred_noise, pred_data)`;
`"velocity"` (`Euler`, `Heun`): the velocity `d x_t / d t`.

`ConsistencySampler` (`kind = "consistency"`) belongs to
`ImmiscibleConsistency` alone: its `sample(consistency_fn, initial_noise,
steps, seed=None, ...)` evaluates the consistency function at a few noise
levels instead of integrating a schedule.

Every sampler also says whether it draws fresh noise between its steps:
the read-only `stochastic` property and `is_stochastic(steps)` (DDPM and
`DDIM(eta > 0)` always; `ConsistencySampler` with more than one level;
`Euler`, `Heun` and `DDIM(eta=0)` never). Only deterministic sampling stays
valid on a model trained with assigned (coupled) noise; `generate` warns
otherwise.

`SamplerBase` (in `sampler.py`, with the helpers the samplers share) is
their common base class.
"""

import keras

from keras_immiscible.samplers.consistency import ConsistencySampler
from keras_immiscible.samplers.ddim import DDIM
from keras_immiscible.samplers.ddpm import DDPM
from keras_immiscible.samplers.flow import Euler
from keras_immiscible.samplers.flow import Heun
from keras_immiscible.samplers.sampler import SamplerBase

_ALIASES = {
    "ddim": DDIM,
    "ddpm": DDPM,
    "euler": Euler,
    "heun": Heun,
}

__all__ = [
    "ConsistencySampler",
    "DDIM",
    "DDPM",
    "Euler",
    "Heun",
    "SamplerBase",
    "get",
    "serialize",
    "deserialize",
]


def serialize(sampler):
    """Returns the Keras serialization dict of a sampler.

    Args:
        sampler: a sampler instance, such as `DDIM`.

    Returns:
        A JSON-compatible dict, accepted by `deserialize()` and `get()`.
    """
    return keras.saving.serialize_keras_object(sampler)


def deserialize(config, custom_objects=None):
    """Creates a sampler from the output of `serialize()`.

    Args:
        config: dict produced by `serialize()` (or a plain
            `{"class_name": ..., "config": ...}` dict naming a built-in
            sampler).
        custom_objects: optional dict of extra classes to look up.

    Returns:
        A sampler instance.
    """
    module_objects = {cls.__name__: cls for cls in _ALIASES.values()}
    module_objects["ConsistencySampler"] = ConsistencySampler
    sampler = keras.saving.deserialize_keras_object(
        config, module_objects=module_objects, custom_objects=custom_objects
    )
    if not callable(getattr(sampler, "sample", None)):
        raise ValueError(
            "The configuration does not describe a sampler. "
            f"Received: config={config!r}"
        )
    return sampler


def get(identifier):
    """Retrieves a sampler from an identifier.

    Args:
        identifier: `None` (the default `DDIM()`), a string (`"ddim"`,
            `"ddpm"`, `"euler"` or `"heun"`, giving the class with its
            default arguments), a dict produced by `serialize()`, or a
            sampler instance (any object with a `sample()` method, returned
            as is).

    Returns:
        A sampler instance.

    Example:

    ```python
    sampler = keras_immiscible.samplers.get("ddim")
    config = keras_immiscible.samplers.serialize(
        keras_immiscible.samplers.DDIM(eta=1.0)
    )
    stochastic = keras_immiscible.samplers.get(config)
    ```
    """
    if identifier is None:
        return DDIM()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str) and identifier.lower() in _ALIASES:
        return _ALIASES[identifier.lower()]()
    if not isinstance(identifier, (str, type)) and callable(
        getattr(identifier, "sample", None)
    ):
        return identifier
    raise ValueError(
        "Could not interpret the sampler identifier. Expected None, one of "
        f"{sorted(_ALIASES)}, a dict produced by "
        "`keras_immiscible.samplers.serialize()` or a sampler instance. "
        f"Received: {identifier!r}"
    )
