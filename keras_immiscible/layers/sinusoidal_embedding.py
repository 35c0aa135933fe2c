"""Sinusoidal embedding of a scalar noise level."""

import math

import keras
import numpy as np
from keras import ops

from keras_immiscible.utils.arguments import check_number
from keras_immiscible.utils.arguments import check_positive_int


@keras.saving.register_keras_serializable(package="keras_immiscible")
class SinusoidalEmbedding(keras.layers.Layer):
    """Sinusoidal features of a scalar noise level (or diffusion time).

    Each sample's scalar `x` is mapped to
    `concat([sin(2 * pi * f_i * x), cos(2 * pi * f_i * x)])`, where the
    `embedding_dims // 2` frequencies `f_i` are spaced geometrically (evenly
    in log space) between `min_frequency` and `max_frequency`, both included.
    This is the embedding of the keras.io "Denoising Diffusion Implicit
    Models" example, returned flat. The layer has no weights.

    The computation is carried out in float32 and the result cast to the
    layer's compute dtype, so that the high frequencies stay accurate under
    mixed precision.

    Args:
        embedding_dims: int. Size of the output features. Must be a positive
            even number: the first half holds the sines, the second half the
            cosines.
        min_frequency: float. Lowest frequency `f_0` (> 0).
        max_frequency: float. Highest frequency (>= `min_frequency`).
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: float tensor of shape `(B,)`, `(B, 1)` or `(B, 1, 1, 1)`
            (any shape with a single value per sample).

    Returns:
        Tensor of shape `(B, embedding_dims)`.

    Example:

    ```python
    noise_level = np.random.uniform(size=(4, 1, 1, 1)).astype("float32")
    embedding = keras_immiscible.layers.SinusoidalEmbedding(32)(noise_level)
    embedding.shape  # (4, 32)
    ```
    """

    def __init__(
        self,
        embedding_dims=32,
        min_frequency=1.0,
        max_frequency=1000.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        embedding_dims = check_positive_int(embedding_dims, "embedding_dims")
        if embedding_dims % 2:
            raise ValueError(
                f"`embedding_dims` must be a positive even int, got {embedding_dims}."
            )
        min_frequency = check_number(
            min_frequency, "min_frequency", low=0, low_open=True
        )
        max_frequency = check_number(max_frequency, "max_frequency", low=min_frequency)
        self.embedding_dims = int(embedding_dims)
        self.min_frequency = min_frequency
        self.max_frequency = max_frequency
        frequencies = np.exp(
            np.linspace(
                math.log(min_frequency),
                math.log(max_frequency),
                self.embedding_dims // 2,
            )
        )
        # Plain numpy constant (not a weight): nothing to save or train.
        self._angular_speeds = (2.0 * math.pi * frequencies).astype("float32")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 1 or any(
            d is not None and d != 1 for d in input_shape[1:]
        ):
            raise ValueError(
                "`SinusoidalEmbedding` expects one value per sample, with an "
                "input of shape (B,), (B, 1) or (B, 1, 1, 1). "
                f"Received: input_shape={input_shape}"
            )
        self.built = True

    def call(self, inputs):
        x = ops.reshape(ops.cast(inputs, "float32"), (-1, 1))
        angles = x * ops.convert_to_tensor(self._angular_speeds)[None, :]
        embedding = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)
        return ops.cast(embedding, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_dims)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embedding_dims": self.embedding_dims,
                "min_frequency": self.min_frequency,
                "max_frequency": self.max_frequency,
            }
        )
        return config
