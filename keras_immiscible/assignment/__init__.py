"""Noise assigners: given a data batch and a seed, the noise to train with.

- `RandomNoise()`: plain diffusion (the baseline).
- `LinearAssignment(solver=..., metric=..., quantize=...)`: Immiscible
  Diffusion's batch-wise linear assignment.
- `KNNSelection(k=...)`: Improved Immiscible Diffusion's k-nearest selection.

`get(identifier)` resolves `None`, `"linear"`, `"knn"`, `"random"`, a config
dict or an instance, Keras-style.
"""

import keras

from keras_immiscible.assignment.knn_selection import KNNSelection
from keras_immiscible.assignment.linear_assignment import LinearAssignment
from keras_immiscible.assignment.noise_assigner import NoiseAssigner
from keras_immiscible.assignment.noise_assigner import assignment_gain
from keras_immiscible.assignment.random_noise import RandomNoise

_ALIASES = {
    "random": RandomNoise,
    "vanilla": RandomNoise,
    "linear": LinearAssignment,
    "knn": KNNSelection,
}


def serialize(assigner):
    """Config dict of an assigner (`keras.saving.serialize_keras_object`)."""
    return keras.saving.serialize_keras_object(assigner)


def deserialize(config):
    """Rebuilds an assigner from `serialize`'s output."""
    return keras.saving.deserialize_keras_object(config)


def get(identifier):
    """Resolves an assigner identifier, Keras-style.

    Args:
        identifier: `None` (plain noise, `RandomNoise()`), one of the strings
            `"random"`, `"linear"` (`LinearAssignment()`), `"knn"`
            (`KNNSelection()`), a dict from `serialize`, or a `NoiseAssigner`.

    Returns:
        A `NoiseAssigner`.
    """
    if identifier is None:
        return RandomNoise()
    if isinstance(identifier, NoiseAssigner):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _ALIASES:
            raise ValueError(
                f"Unknown assignment {identifier!r}; expected None, one of "
                f"{sorted(_ALIASES)}, a config dict or a NoiseAssigner."
            )
        return _ALIASES[key]()
    if isinstance(identifier, dict):
        assigner = deserialize(identifier)
        if not isinstance(assigner, NoiseAssigner):
            raise ValueError(f"{identifier!r} does not describe a NoiseAssigner.")
        return assigner
    raise TypeError(
        "`assignment` must be None, a string, a config dict or a "
        f"NoiseAssigner, got {type(identifier).__name__}: {identifier!r}."
    )
