"""Stable Diffusion 1.x's VAE (keras-cv) as an `Autoencoder`."""

import os

import keras

from keras_immiscible.latent.autoencoder import Autoencoder

SCALING_FACTOR = 0.18215
DOWNSAMPLING = 8
LATENT_CHANNELS = 4
# The names keras-cv's download gives the files (under ~/.keras/datasets/).
ENCODER_WEIGHTS_FILE = "vae_encoder.h5"
DECODER_WEIGHTS_FILE = "kcv_decoder.h5"


def import_keras_cv():
    """Imports keras-cv's Stable Diffusion module, or says how to get it."""
    try:
        from keras_cv.models import stable_diffusion
    except ImportError as e:
        raise ImportError(
            "StableDiffusionVAE needs keras-cv: `pip install "
            "keras-immiscible[latent]` (or `pip install keras-cv`). The rest "
            "of keras_immiscible.latent (Autoencoder, encode_dataset) works "
            "without it."
        ) from e
    return stable_diffusion


def _check_image_size(image_size):
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        size = tuple(image_size)
    else:
        size = (image_size, image_size)
    for side in size:
        if (
            isinstance(side, bool)
            or not isinstance(side, int)
            or side < DOWNSAMPLING
            or side % DOWNSAMPLING
        ):
            raise ValueError(
                "`image_size` must be an int or a pair (height, width) of "
                f"multiples of {DOWNSAMPLING} (the VAE downsamples by 8), got "
                f"{image_size!r}."
            )
    return size


def _check_weights(weights):
    """Returns None, "download", ("model", path) or ("pair", enc, dec)."""
    if weights is None or (isinstance(weights, str) and weights == "download"):
        return weights
    if isinstance(weights, (tuple, list)):
        if len(weights) != 2 or not all(
            isinstance(w, (str, os.PathLike)) for w in weights
        ):
            raise ValueError(
                "`weights` as a sequence must be a pair (encoder_weights_file,"
                f" decoder_weights_file), got {weights!r}."
            )
        paths = tuple(os.fspath(w) for w in weights)
        kind = "pair"
    elif isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if os.path.isdir(path):
            paths = (
                os.path.join(path, ENCODER_WEIGHTS_FILE),
                os.path.join(path, DECODER_WEIGHTS_FILE),
            )
            kind = "pair"
        else:
            paths = (path,)
            kind = "model"
    else:
        raise TypeError(
            "`weights` must be None, 'download', a path or a pair of paths, "
            f"got {weights!r}."
        )
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"StableDiffusionVAE weights file {path!r} does not exist. "
                "Pass weights='download' (keras-cv's files, downloaded once "
                f"to ~/.keras/datasets/{ENCODER_WEIGHTS_FILE} and "
                f"{DECODER_WEIGHTS_FILE}), the folder holding those two "
                "files, a pair of paths (encoder, decoder), a `.weights.h5` "
                "file from `StableDiffusionVAE.save_weights`, or None "
                "(random weights, for tests)."
            )
    return (kind,) + paths


@keras.saving.register_keras_serializable(package="keras_immiscible")
class StableDiffusionVAE(Autoencoder):
    """Stable Diffusion 1.x's VAE (keras-cv) as an `Autoencoder`.

    The KL-f8 autoencoder of Stable Diffusion v1 (the one Immiscible
    Diffusion's latent experiments use), from keras-cv's
    `keras_cv.models.stable_diffusion.ImageEncoder` and `Decoder`: images
    `(B, H, W, 3)` become latents `(B, H / 8, W / 8, 4)`, scaled by
    Stable Diffusion's 0.18215. The networks work in [-1, 1]; `encode`
    takes and `decode` returns images in `image_range` ([0, 1] by default,
    the library's float range; uint8 images are read as 0-255).

    `encode` returns the posterior mean by default (deterministic, the same
    latents keras-cv's `ImageEncoder` gives); `encode(images, sample=True,
    seed=...)` draws from the posterior `mean + exp(logvar / 2) * eps`, as
    Stable Diffusion's training code does.

    Needs keras-cv: `pip install keras-immiscible[latent]`. Frozen by default
    (`trainable=False`).

    Args:
        weights: `"download"` (the default): keras-cv's Stable Diffusion
            v1.4 VAE weights, downloaded once by `keras.utils.get_file` to
            `~/.keras/datasets/vae_encoder.h5` and `kcv_decoder.h5`
            (needs network the first time). Offline: the folder holding
            those two files, a pair `(encoder_file, decoder_file)` of files
            that keras-cv's `ImageEncoder` and `Decoder` `load_weights`
            read, or a `.weights.h5` file from this class's
            `save_weights`. None: random weights (tests only).
        image_size: int or `(height, width)`, multiples of 8: the image size
            `decode` produces (keras-cv's decoder has a fixed size).
        image_range: `(low, high)`, the range of the float images `encode`
            takes and `decode` returns.
        trainable: whether the VAE's weights train (default False: frozen,
            as in latent diffusion).
        name: the model name.
        **kwargs: other `keras.Model` arguments (`dtype`).

    The config (`get_config`) describes the architecture only and always
    holds `weights=None`: a `.keras` file brings the weights back from its
    own saved variables, without a download.

    Example:

    >>> vae = StableDiffusionVAE(weights=None, image_size=64)  # or "download"
    >>> z = vae.encode(images)     # (B, 64, 64, 3) in [0, 1] -> (B, 8, 8, 4)
    >>> x = vae.decode(z)          # (B, 64, 64, 3) in [0, 1]
    >>> vae.latent_shape, vae.scaling_factor
    ((8, 8, 4), 0.18215)
    """

    def __init__(
        self,
        weights="download",
        image_size=256,
        image_range=(0.0, 1.0),
        trainable=False,
        name="stable_diffusion_vae",
        **kwargs,
    ):
        height, width = _check_image_size(image_size)
        spec = _check_weights(weights)
        stable_diffusion = import_keras_cv()
        download = spec == "download"
        try:
            full_encoder = stable_diffusion.ImageEncoder(download_weights=download)
            full_decoder = stable_diffusion.Decoder(
                height, width, download_weights=download
            )
        except Exception as e:
            if not download:
                raise
            raise RuntimeError(
                "Could not get keras-cv's Stable Diffusion VAE weights "
                f"({type(e).__name__}: {e}). Offline, copy "
                f"{ENCODER_WEIGHTS_FILE} and {DECODER_WEIGHTS_FILE} (from "
                "https://huggingface.co/fchollet/stable-diffusion, or another "
                "machine's ~/.keras/datasets/) into a folder and pass "
                "`weights=` that folder; `weights=None` gives random weights "
                "(tests only)."
            ) from e
        if spec is not None and spec[0] == "pair":
            full_encoder.load_weights(spec[1])
            full_decoder.load_weights(spec[2])
        # keras-cv's encoder ends in `x[..., :4] * 0.18215` (the posterior
        # mean, scaled) and its decoder starts with `Rescaling(1 / 0.18215)`:
        # the same layers without those two give the posterior's moments
        # (mean and log-variance, 8 channels) and take unscaled latents, and
        # `Autoencoder` does the scaling.
        encoder = keras.Sequential(
            [keras.Input((height, width, 3))] + full_encoder.layers[:-1],
            name="encoder",
        )
        decoder = keras.Sequential(
            [
                keras.Input(
                    (
                        height // DOWNSAMPLING,
                        width // DOWNSAMPLING,
                        LATENT_CHANNELS,
                    )
                )
            ]
            + full_decoder.layers[1:],
            name="decoder",
        )
        super().__init__(
            encoder,
            decoder,
            scaling_factor=SCALING_FACTOR,
            image_range=image_range,
            model_range=(-1.0, 1.0),
            posterior="diagonal_gaussian",
            image_shape=(height, width, 3),
            latent_shape=(
                height // DOWNSAMPLING,
                width // DOWNSAMPLING,
                LATENT_CHANNELS,
            ),
            trainable=trainable,
            name=name,
            **kwargs,
        )
        self._image_size = (height, width)
        if spec is not None and spec[0] == "model":
            self.load_weights(spec[1])

    @property
    def image_size(self):
        """`(height, width)` of the images."""
        return self._image_size

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "weights": None,
            "image_size": list(self._image_size),
            "image_range": list(self.image_range),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
