"""Feature extractors for FID and KID: Inception-V3, or any model/callable.

A feature extractor maps a batch of images, shape (N, ...), to a batch of
feature vectors, shape (N, d). The metrics only ever see features, so any
`keras.Model` or Python callable can stand in for Inception-V3 (the digits
classifier of `digits_classifier.py` is one).

About Inception-V3 and published FIDs
-------------------------------------
The default extractor is `keras.applications.InceptionV3(include_top=False,
pooling="avg")` with its ImageNet weights: 2048-d pool features. This is
*not* the TF-1 "pt_inception-2015-12-05" graph used by the reference FID
implementations (TTUR, pytorch-fid, clean-fid): the weights, a few layers
and the resizing differ. Absolute FID/KID values computed here are therefore
comparable with each other (same library, same extractor, same number of
images), not with numbers in published tables.

Preprocessing: images are float in [0, 1] or uint8 in 0-255, NHWC. Grey
images are tiled to three channels, every batch is resized to 299x299 with
`keras.ops.image.resize(..., interpolation="bilinear", antialias=True)`
(identical on TensorFlow, JAX and PyTorch, with an antialiasing filter when
downsampling; it agrees with PIL's `Image.resize(..., BILINEAR)` to about
1e-5, see the tests), clipped to [0, 1] and mapped to [-1, 1], which is what
`keras.applications.inception_v3.preprocess_input` does for 0-255 input.

Weights: `weights="imagenet"` lets Keras download the ImageNet weights
(about 90 MB) into `~/.keras/models/` on first use. That is the only network
access in this module. Offline, pass the path of a local weights file for
`InceptionV3(include_top=False)` (e.g. the downloaded
`inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5`), or
`weights=None` (random, untrained weights: only good for tests), or your own
`feature_extractor`.
"""

import os

import keras
import numpy as np

from keras_immiscible.utils import arguments

INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048


def to_numpy(x, name):
    """Converts an array-like (numpy, a backend tensor, a tf/torch tensor)
    to numpy, with a clear error for things that are not arrays."""
    if x is None or isinstance(x, (str, bytes, dict)):
        raise TypeError(f"`{name}` must be an array of images, got {x!r}.")
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(keras.ops.convert_to_numpy(x))
    except Exception:  # noqa: BLE001 - tensors of another framework
        pass
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise TypeError(
            f"`{name}` must be an array of images; could not convert a "
            f"{type(x).__name__}: {e}"
        ) from e


def check_finite_samples(x, name):
    """Generic checks of a batch of samples; returns it as numpy.

    The batch must be numeric, have a leading batch axis with at least one
    sample (rank >= 2) and hold no NaN/inf.
    """
    x = to_numpy(x, name)
    if x.dtype == np.bool_ or not (
        np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
    ):
        raise TypeError(
            f"`{name}` must hold float or integer values, got dtype {x.dtype}."
        )
    if x.ndim < 2:
        raise ValueError(
            f"`{name}` must be a batch with the sample axis first, e.g. "
            f"images of shape (N, height, width, channels); got shape "
            f"{x.shape} (rank {x.ndim})."
        )
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (shape {x.shape}).")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise ValueError(
            f"`{name}` contains {bad} NaN or infinite value(s); image "
            "statistics are undefined for them. Check the generator or the "
            "data pipeline."
        )
    return x


def images_to_unit_float(x, name):
    """uint8/integer 0-255 or float [0, 1] images -> float32 in [0, 1].

    Floats slightly outside [0, 1] (a generator that does not clip) are
    clipped; floats clearly in another range (e.g. 0-255 or [-1, 1]) raise,
    because that is almost always a scaling bug upstream.
    """
    if np.issubdtype(x.dtype, np.integer):
        low, high = int(x.min()), int(x.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"Integer `{name}` must hold 0-255 pixel values, got values "
                f"in [{low}, {high}]."
            )
        return x.astype(np.float32) / 255.0
    low, high = float(x.min()), float(x.max())
    if low < -0.5 or high > 1.5:
        raise ValueError(
            f"Float `{name}` must hold values in [0, 1] (or pass uint8 "
            f"0-255), got values in [{low:.4g}, {high:.4g}]. Rescale them "
            "first, e.g. `images / 255.0` or `(images + 1) / 2`."
        )
    return np.clip(x.astype(np.float32), 0.0, 1.0)


class FeatureExtractor:
    """Base class: maps an image batch (N, ...) to features (N, d).

    Subclasses implement `extract(batch)` on a numpy batch of at most
    `batch_size` samples and may refine `validate(images, name)`.
    Calling the extractor validates the input, runs `extract` batch by batch
    and returns a numpy array of shape (N, d) (float32, or float64 when the
    extractor returns float64). A batch smaller than `batch_size` is padded
    (repeating its last image) to the next power of two, so that compiled
    extractors see few distinct shapes; the features of the padding rows
    are dropped.

    Two metrics whose extractors have the same `source` share feature
    extraction in `evaluate_generator` and `callbacks.GenerativeEvaluation`.
    """

    def __init__(self, batch_size=64):
        self.batch_size = arguments.check_positive_int(batch_size, "batch_size")

    @property
    def source(self):
        return self

    def validate(self, images, name="images"):
        return check_finite_samples(images, name)

    def extract(self, batch):
        raise NotImplementedError

    def __call__(self, images, name="images"):
        return self.extract_validated(self.validate(images, name))

    def extract_validated(self, images):
        """Features of a numpy batch that already passed `validate`."""
        n = images.shape[0]
        chunks = []
        for start in range(0, n, self.batch_size):
            batch = images[start : start + self.batch_size]
            rows = batch.shape[0]
            # Pad a smaller batch (by repeating its last image) to the next
            # power of two, at most `batch_size`: compiled extractors then
            # see few distinct shapes (no retracing per batch size), at
            # less than twice the work for a small batch.
            padded = min(self.batch_size, 1 << (rows - 1).bit_length())
            if rows < padded:
                pad = np.repeat(batch[-1:], padded - rows, axis=0)
                batch = np.concatenate([batch, pad], axis=0)
            features = self._check_features(self.extract(batch), batch)
            chunks.append(features[:rows])
        return np.concatenate(chunks, axis=0)

    def _check_features(self, features, batch):
        features = to_numpy(features, "feature_extractor output")
        if features.ndim != 2 or features.shape[0] != batch.shape[0]:
            raise ValueError(
                "`feature_extractor` must map a batch of shape "
                f"{batch.shape} to features of shape ({batch.shape[0]}, d), "
                f"got shape {features.shape}. Flatten or pool its output."
            )
        if not np.issubdtype(features.dtype, np.floating):
            features = features.astype(np.float32)
        if not np.all(np.isfinite(features)):
            raise ValueError(
                "`feature_extractor` returned NaN or infinite features for "
                "finite images."
            )
        if features.dtype != np.float64:
            features = features.astype(np.float32)
        return features


class CallableFeatureExtractor(FeatureExtractor):
    """Wraps a `keras.Model` (run with `predict_on_batch`) or any callable.

    The callable receives numpy batches of at most `batch_size` samples,
    exactly as given (no rescaling: preprocessing is the callable's job),
    and must return (batch, d) features as anything convertible to numpy.
    """

    def __init__(self, fn, batch_size=64):
        super().__init__(batch_size)
        if not callable(fn):
            raise TypeError(f"`feature_extractor` must be callable, got {fn!r}.")
        self.fn = fn

    @property
    def source(self):
        return self.fn

    def extract(self, batch):
        if isinstance(self.fn, keras.Model):
            return self.fn.predict_on_batch(batch)
        return self.fn(batch)


_INCEPTION_MODELS = {}


def check_inception_weights(weights):
    """Validates an Inception `weights` spec; returns it normalized
    (`"imagenet"`, `None` or an absolute path string)."""
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            "`weights` must be 'imagenet', None or the path of a weights "
            f"file, got {weights!r}."
        )
    if weights is not None and weights != "imagenet":
        weights = os.path.abspath(os.fspath(weights))
        if not os.path.exists(weights):
            raise ValueError(
                f"`weights` file {weights!r} does not exist. Pass 'imagenet' "
                "(downloads once), None (random weights) or the path of a "
                "local InceptionV3(include_top=False) weights file."
            )
    return weights


def inception_v3_model(weights="imagenet"):
    """The (cached) `InceptionV3(include_top=False, pooling="avg")` model.

    One model per backend and weights spec is built per process and shared
    by all metrics. See the module docstring about `weights`.
    """
    weights = check_inception_weights(weights)
    key = (keras.backend.backend(), weights)
    if key not in _INCEPTION_MODELS:
        try:
            model = keras.applications.InceptionV3(
                include_top=False,
                weights=weights,
                input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3),
                pooling="avg",
            )
        except Exception as e:  # noqa: BLE001 - re-raised with advice
            if weights == "imagenet":
                raise RuntimeError(
                    "Could not get the ImageNet weights of InceptionV3 "
                    f"({type(e).__name__}: {e}). They are downloaded once "
                    "into ~/.keras/models/; offline, pass `weights=` the path "
                    "of a local InceptionV3(include_top=False) weights file, "
                    "`weights=None` (random weights, tests only) or your own "
                    "`feature_extractor`."
                ) from e
            raise
        _INCEPTION_MODELS[key] = model
    return _INCEPTION_MODELS[key]


class InceptionFeatureExtractor(FeatureExtractor):
    """Inception-V3 pool features (2048-d) of NHWC images.

    Args:
        weights: `"imagenet"` (downloaded once by Keras), `None` (random) or
            the path of a local `InceptionV3(include_top=False)` weights
            file.
        batch_size: images per forward pass.

    Input: (N, H, W, 1 or 3) images, float in [0, 1] or uint8 0-255. See the
    module docstring for the preprocessing and for why the values are not
    comparable with published FIDs. The model is built on first use.
    """

    def __init__(self, weights="imagenet", batch_size=64):
        super().__init__(batch_size)
        self.weights = check_inception_weights(weights)
        self._model = None

    @property
    def source(self):
        return ("inception_v3", self.weights)

    @property
    def model(self):
        if self._model is None:
            self._model = inception_v3_model(self.weights)
        return self._model

    def validate(self, images, name="images"):
        images = check_finite_samples(images, name)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(
                f"`{name}` must be NHWC images with 1 (grey) or 3 (RGB) "
                f"channels for Inception-V3, got shape {images.shape}."
            )
        images_to_unit_float(images, name)  # range check only
        return images

    def preprocess(self, batch):
        """uint8/[0, 1] NHWC -> (N, 299, 299, 3) in [-1, 1] (backend tensor)."""
        x = images_to_unit_float(batch, "images")
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        x = keras.ops.convert_to_tensor(x)
        if tuple(x.shape[1:3]) != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = keras.ops.image.resize(
                x,
                (INCEPTION_SIZE, INCEPTION_SIZE),
                interpolation="bilinear",
                antialias=True,
            )
            x = keras.ops.clip(x, 0.0, 1.0)
        return x * 2.0 - 1.0

    def extract(self, batch):
        return self.model.predict_on_batch(self.preprocess(batch))


_EXTRACTORS = {}


def get_feature_extractor(identifier=None, weights="imagenet", batch_size=64):
    """Resolves a feature extractor spec to a `FeatureExtractor`.

    Args:
        identifier: `None` or `"inception_v3"` (Inception-V3 with `weights`),
            `"digits"` (the classifier of `digits_feature_extractor()`), a
            `FeatureExtractor`, a `keras.Model` or any callable mapping an
            image batch to (N, d) features.
        weights: Inception-V3 weights (see `InceptionFeatureExtractor`).
        batch_size: samples per call of the extractor.

    Built-in extractors are cached per process, so metrics built from the
    same spec share one instance (and one model).
    """
    if isinstance(identifier, FeatureExtractor):
        return identifier
    if identifier is None or isinstance(identifier, str):
        name = "inception_v3" if identifier is None else identifier.lower()
        if name in ("inception", "inception_v3", "inceptionv3"):
            key = ("inception_v3", weights, batch_size)
            if key not in _EXTRACTORS:
                _EXTRACTORS[key] = InceptionFeatureExtractor(
                    weights=weights, batch_size=batch_size
                )
            return _EXTRACTORS[key]
        if name == "digits":
            from keras_immiscible.metrics.digits_classifier import (
                digits_feature_extractor,
            )

            return digits_feature_extractor()
        raise ValueError(
            "`feature_extractor` must be None/'inception_v3', 'digits', a "
            f"keras.Model or a callable, got {identifier!r}."
        )
    if callable(identifier):
        return CallableFeatureExtractor(identifier, batch_size=batch_size)
    raise TypeError(
        "`feature_extractor` must be None/'inception_v3', 'digits', a "
        f"keras.Model or a callable, got {identifier!r}."
    )
