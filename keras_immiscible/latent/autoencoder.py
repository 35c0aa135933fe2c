"""The encoder/decoder interface of latent diffusion: `Autoencoder`.

An `Autoencoder` maps images (in the caller's range) to scaled latents and
back. Diffusion models that train on latents only use this interface:

- `encode(images, sample=False, seed=None, training=False)`: images
  `(B, *image_shape)` -> latents `(B, *latent_shape)` float32, multiplied by
  `scaling_factor`.
- `decode(latents, clip=True, training=False)`: scaled latents -> images
  `(B, *image_shape)` float32 in `image_range`.
- `image_shape`, `latent_shape`, `scaling_factor`, `image_range`,
  `model_range`, `posterior`, `stochastic`.

`StableDiffusionVAE` is one such autoencoder; any pair of Keras models or
callables becomes one with `Autoencoder(encoder, decoder, ...)`.
"""

import math
import numbers

import keras
from keras import ops

from keras_immiscible.utils import arguments

POSTERIORS = (None, "diagonal_gaussian")
# The clip of the log-variance in Stable Diffusion's
# `DiagonalGaussianDistribution` (ldm/modules/distributions).
LOGVAR_RANGE = (-30.0, 20.0)


def _check_range(value, name):
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value
        )
        or not all(math.isfinite(v) for v in value)
        or not value[0] < value[1]
    ):
        raise ValueError(
            f"`{name}` must be a pair (low, high) of finite numbers with "
            f"low < high, e.g. (0, 1) or (-1, 1), got {value!r}."
        )
    return (float(value[0]), float(value[1]))


def _check_shape(value, name):
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0
        for d in value
    ):
        raise ValueError(
            f"`{name}` must be None or a tuple of positive ints without the "
            f"batch axis, e.g. (64, 64, 3), got {value!r}."
        )
    return tuple(int(d) for d in value)


def _known_shape(shape):
    """`shape[1:]` as a tuple of ints, or None if any axis is unknown."""
    if shape is None:
        return None
    shape = tuple(shape)[1:]
    if not shape or any(d is None for d in shape):
        return None
    return tuple(int(d) for d in shape)


def _model_shape(layer, attribute):
    """A Keras model's known input or output shape without the batch axis."""
    if not isinstance(layer, keras.Model):
        return None
    try:
        shape = getattr(layer, attribute)
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, list):
        return None  # several inputs or outputs: not an image model
    return _known_shape(shape)


def _call(function, inputs, training):
    """Calls a Keras layer with `training`, any other callable without."""
    if isinstance(function, keras.Layer):
        return function(inputs, training=training)
    return function(inputs)


@keras.saving.register_keras_serializable(package="keras_immiscible")
class Autoencoder(keras.Model):
    """An image encoder and decoder behind the latent-diffusion interface.

    `encode` maps images in `image_range` (or uint8 images in 0-255) to the
    encoder's input range `model_range`, runs the encoder and multiplies its
    latents by `scaling_factor`; `decode` divides by `scaling_factor`, runs
    the decoder and maps its output from `model_range` back to
    `image_range`. Diffusion models see only the scaled latents, so pick
    `scaling_factor` to give them roughly unit variance (Stable Diffusion's
    VAE uses 0.18215).

    Called as a model, `autoencoder(images)` is the reconstruction
    `decode(encode(images), clip=False)`, so a small autoencoder can be
    trained with `compile(loss="mse")` and `fit(images, images)`. Freeze it
    (`autoencoder.trainable = False`) before a diffusion model trains on its
    latents.

    Args:
        encoder: a Keras model (or layer, or any callable on a batch of
            images) from images in `model_range`, `(B, *image_shape)`, to
            latents `(B, *latent_shape)`; with
            `posterior="diagonal_gaussian"`, to `(B, ..., 2 * channels)`: the
            mean and the log-variance concatenated on the last axis.
        decoder: a Keras model (or layer, or callable) from unscaled latents
            `(B, *latent_shape)` to images in `model_range`.
        scaling_factor: positive float; `encode` returns the encoder's
            latents times `scaling_factor`, `decode` divides by it.
        image_range: `(low, high)`, the range of the float images `encode`
            takes and `decode` returns. uint8 images are always read as
            0-255.
        model_range: `(low, high)`, the range the encoder takes and the
            decoder returns; None (the default): `image_range` (no
            conversion).
        posterior: None (the encoder's output is the latent) or
            `"diagonal_gaussian"` (the encoder returns the mean and the
            log-variance of a Gaussian posterior, as Stable Diffusion's
            VAE does; `encode` returns the mean, or a sample with
            `sample=True`).
        image_shape: the image shape without the batch axis, e.g.
            `(64, 64, 3)`; None: the encoder's input shape (Keras models
            with a known input) or the decoder's output shape. Needed for
            callables.
        latent_shape: the latent shape without the batch axis; None: the
            decoder's input shape (Keras models with a known input), or the
            encoder's output on `image_shape`.
        **kwargs: `keras.Model` arguments (`name`, `trainable`, `dtype`).

    Example:

    >>> encoder = keras.Sequential([
    ...     keras.Input((16, 16, 1)),
    ...     keras.layers.Conv2D(4, 3, strides=2, padding="same"),
    ... ])
    >>> decoder = keras.Sequential([
    ...     keras.Input((8, 8, 4)),
    ...     keras.layers.Conv2DTranspose(1, 3, strides=2, padding="same"),
    ... ])
    >>> autoencoder = Autoencoder(encoder, decoder, scaling_factor=0.5)
    >>> autoencoder.latent_shape
    (8, 8, 4)
    >>> z = autoencoder.encode(images)      # (B, 8, 8, 4)
    >>> x = autoencoder.decode(z)           # (B, 16, 16, 1) in [0, 1]
    """

    def __init__(
        self,
        encoder,
        decoder,
        scaling_factor=1.0,
        image_range=(0.0, 1.0),
        model_range=None,
        posterior=None,
        image_shape=None,
        latent_shape=None,
        **kwargs,
    ):
        trainable = kwargs.pop("trainable", True)
        super().__init__(**kwargs)
        for value, name in ((encoder, "encoder"), (decoder, "decoder")):
            if not callable(value):
                raise TypeError(
                    f"`{name}` must be a Keras model or a callable, got {value!r}."
                )
        scaling_factor = arguments.check_number(
            scaling_factor, "scaling_factor", low=0, low_open=True
        )
        arguments.check_choice(posterior, "posterior", POSTERIORS)
        self.encoder = encoder
        self.decoder = decoder
        self._scaling_factor = float(scaling_factor)
        self._image_range = _check_range(image_range, "image_range")
        self._model_range = (
            self._image_range
            if model_range is None
            else _check_range(model_range, "model_range")
        )
        self._posterior = posterior
        self._image_shape = _check_shape(image_shape, "image_shape")
        self._latent_shape = _check_shape(latent_shape, "latent_shape")
        self.trainable = trainable
        # Every weight lives in the (built) encoder and decoder.
        self.built = True

    # ------------------------------------------------------------ properties

    @property
    def scaling_factor(self):
        """The float that `encode` multiplies the encoder's latents by."""
        return self._scaling_factor

    @property
    def image_range(self):
        """`(low, high)`: the range of the images `encode` takes and
        `decode` returns."""
        return self._image_range

    @property
    def model_range(self):
        """`(low, high)`: the range the encoder takes, the decoder returns."""
        return self._model_range

    @property
    def posterior(self):
        """None (deterministic) or `"diagonal_gaussian"`."""
        return self._posterior

    @property
    def stochastic(self):
        """True when `encode(..., sample=True)` draws from a posterior."""
        return self._posterior is not None

    @property
    def image_shape(self):
        """The image shape without the batch axis, e.g. `(64, 64, 3)`."""
        if self._image_shape is None:
            shape = _model_shape(self.encoder, "input_shape")
            if shape is None:
                shape = _model_shape(self.decoder, "output_shape")
            if shape is None:
                raise ValueError(
                    f"{type(self).__name__} cannot tell its image shape from "
                    "its encoder and decoder: pass `image_shape=` (without "
                    "the batch axis, e.g. (64, 64, 3))."
                )
            self._image_shape = shape
        return self._image_shape

    @property
    def latent_shape(self):
        """The latent shape without the batch axis, e.g. `(8, 8, 4)`."""
        if self._latent_shape is None:
            shape = _model_shape(self.decoder, "input_shape")
            if shape is None:
                shape = self._infer_latent_shape()
            self._latent_shape = shape
        return self._latent_shape

    def _infer_latent_shape(self):
        """The encoder's output shape on one image of `image_shape`."""
        image_shape = self.image_shape
        try:
            out = _call(
                self.encoder,
                keras.KerasTensor((1,) + image_shape, dtype="float32"),
                False,
            )
        except Exception:  # a callable that needs real values
            out = _call(
                self.encoder,
                ops.zeros((1,) + image_shape, dtype="float32"),
                False,
            )
        shape = _known_shape(out.shape)
        if shape is None:
            raise ValueError(
                f"{type(self).__name__} cannot tell its latent shape: pass "
                "`latent_shape=` (without the batch axis, e.g. (8, 8, 4))."
            )
        if self._posterior is not None:
            shape = self._posterior_shape(shape)
        return shape

    def _posterior_shape(self, shape):
        if shape[-1] % 2:
            raise ValueError(
                "With posterior='diagonal_gaussian' the encoder must return "
                "the mean and the log-variance concatenated on the last "
                f"axis (an even number of channels), got shape {shape}."
            )
        return shape[:-1] + (shape[-1] // 2,)

    # ------------------------------------------------------------ conversion

    def _to_model_range(self, images):
        images = ops.convert_to_tensor(images)
        dtype = keras.backend.standardize_dtype(images.dtype)
        images = ops.cast(images, "float32")
        low, high = self._model_range
        if dtype == "uint8":
            return images * ((high - low) / 255.0) + low
        in_low, in_high = self._image_range
        if (in_low, in_high) == (low, high):
            return images
        return (images - in_low) * ((high - low) / (in_high - in_low)) + low

    def _to_image_range(self, images):
        low, high = self._model_range
        out_low, out_high = self._image_range
        if (out_low, out_high) == (low, high):
            return images
        return (images - low) * ((out_high - out_low) / (high - low)) + out_low

    def _check_input_shape(self, tensor, expected, what, method):
        shape = tuple(tensor.shape)[1:]
        if len(shape) != len(expected) or any(
            d is not None and d != e for d, e in zip(shape, expected)
        ):
            raise ValueError(
                f"{type(self).__name__}.{method} takes {what} of shape "
                f"(batch, {', '.join(map(str, expected))}), got shape "
                f"{tuple(tensor.shape)}."
            )

    # ------------------------------------------------------------- interface

    def encode(self, images, sample=False, seed=None, training=False):
        """Encodes images to scaled latents.

        Args:
            images: `(B, *image_shape)` float images in `image_range`, or
                uint8 images in 0-255.
            sample: with a Gaussian posterior, False returns its mean (the
                default: deterministic, what keras-cv's `ImageEncoder`
                returns) and True a sample `mean + std * eps` (what Stable
                Diffusion's training code uses). No effect for a
                deterministic encoder (`posterior=None`).
            seed: the seed of `eps` when sampling: an int (the same `eps`
                at every call), a `keras.random.SeedGenerator` (new `eps`
                at every call; needed inside a jit-compiled function on
                JAX), or None (Keras' global generator).
            training: passed to Keras encoders.

        Returns:
            float32 latents `(B, *latent_shape)`, times `scaling_factor`.
        """
        arguments.check_bool(sample, "sample")
        x = self._to_model_range(images)
        try:
            expected = self.image_shape
        except ValueError:  # a callable encoder without `image_shape`
            expected = None
        if expected is not None:
            self._check_input_shape(x, expected, "images", "encode")
        out = ops.cast(_call(self.encoder, x, training), "float32")
        if self._posterior is not None:
            self._posterior_shape(tuple(out.shape)[1:])
            mean, logvar = ops.split(out, 2, axis=-1)
            if sample:
                logvar = ops.clip(logvar, *LOGVAR_RANGE)
                eps = keras.random.normal(ops.shape(mean), dtype="float32", seed=seed)
                out = mean + ops.exp(0.5 * logvar) * eps
            else:
                out = mean
        return out * self._scaling_factor

    def decode(self, latents, clip=True, training=False):
        """Decodes scaled latents to images.

        Args:
            latents: `(B, *latent_shape)` latents as `encode` returns them
                (times `scaling_factor`).
            clip: clip the images to `image_range` (the decoder's output is
                not bounded).
            training: passed to Keras decoders.

        Returns:
            float32 images `(B, *image_shape)` in `image_range`.
        """
        z = ops.cast(ops.convert_to_tensor(latents), "float32")
        self._check_input_shape(z, self.latent_shape, "latents", "decode")
        images = ops.cast(
            _call(self.decoder, z / self._scaling_factor, training), "float32"
        )
        images = self._to_image_range(images)
        if clip:
            images = ops.clip(images, *self._image_range)
        return images

    def call(self, images, training=None):
        """The reconstruction `decode(encode(images), clip=False)`."""
        return self.decode(
            self.encode(images, training=training),
            clip=False,
            training=training,
        )

    # --------------------------------------------------------- serialization

    def _shapes_config(self):
        try:
            image_shape = list(self.image_shape)
        except ValueError:
            image_shape = None
        try:
            latent_shape = list(self.latent_shape)
        except ValueError:
            latent_shape = None
        return image_shape, latent_shape

    def get_config(self):
        image_shape, latent_shape = self._shapes_config()
        return {
            "name": self.name,
            "trainable": self.trainable,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "scaling_factor": self._scaling_factor,
            "image_range": list(self._image_range),
            "model_range": list(self._model_range),
            "posterior": self._posterior,
            "image_shape": image_shape,
            "latent_shape": latent_shape,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
