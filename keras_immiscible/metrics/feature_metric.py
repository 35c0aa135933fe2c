"""Base class of the feature-space metrics (FID, KID).

Where the state lives, and why
------------------------------
FID and KID are statistics of *features* of two image sets. The features
are computed by the backend (the extractor is a Keras model or any
callable); the statistics are accumulated and evaluated **on the host, in
numpy float64**:

- FID needs a d x d covariance (d = 2048 for Inception) and a matrix square
  root. Accumulating it in float32 loses digits (the sum of outer products
  of ~10^4 vectors with a non-zero mean cancels badly), and JAX disables
  float64 by default (`jax_enable_x64`), so backend float64 variables would
  silently become float32 there. Keeping the accumulators in numpy float64
  behaves the same on every backend.
- KID needs the features themselves (for the subset kernel estimates),
  which is host memory anyway.

Why they are not `keras.metrics.Metric`s
----------------------------------------
`update_state` converts its inputs to numpy, so it cannot run inside a
compiled `train_step`; and a generative model's `compile(metrics=...)`
would only feed it the training batch and the model's identity forward
pass, never real *and generated* images. So `FeatureMetric` is a plain
Python class with the metric methods (`update_state`, `result`,
`reset_state`, `get_config`/`from_config`) and no Keras variables. Passed
to `model.compile(metrics=[...])`, it raises a `TypeError` that says what to
use instead (Keras calls it like a metric function at the first training
step, and calling it is that error). The metrics are meant to be driven
by `keras_immiscible.callbacks.GenerativeEvaluation` (during `fit`),
`keras_immiscible.metrics.evaluate_generator` (after it) or your own loop.

`result()` returns a numpy float64 scalar (`np.float64` is a Python float,
so it can go straight into `logs`, `float()` or `json`).
"""

import os
import re

from keras_immiscible.metrics.feature_extractors import check_finite_samples
from keras_immiscible.metrics.feature_extractors import check_inception_weights
from keras_immiscible.metrics.feature_extractors import get_feature_extractor
from keras_immiscible.utils import arguments

REAL = "real"
GENERATED = "generated"


class FeatureMetric:
    """A distance between the feature distributions of real and generated
    images, accumulated in a streaming way on the host.

    A plain class with the methods of a Keras metric (`update_state`,
    `result`, `reset_state`, `get_config`, `from_config`), not a
    `keras.metrics.Metric`: its state is host float64 numpy, it runs
    eagerly, and it cannot go in `model.compile(metrics=...)` (that raises a
    `TypeError`; see the module docstring). Evaluate it during training
    with `keras_immiscible.callbacks.GenerativeEvaluation`, after training
    with `keras_immiscible.metrics.evaluate_generator`, or feed it yourself.

    Args:
        feature_extractor: `None`/`"inception_v3"` (Inception-V3 pool
            features; see `feature_extractors`), `"digits"` (the embedded
            digits classifier), a `keras.Model`, or any callable mapping an
            image batch (numpy, shape (n, ...)) to features of shape (n, d).
            Custom callables get the images unchanged (no rescaling).
        weights: Inception-V3 weights when `feature_extractor` is Inception:
            `"imagenet"` (downloaded once by Keras), `None` (random, for
            tests) or the path of a local weights file.
        batch_size: images per call of the feature extractor.
        name: the metric's name (default: the class name in snake case).
        dtype: accepted for compatibility with the Keras metric signature
            and ignored: the computation is float64 on the host.

    Subclasses implement `_accumulate(side, features)`, `_reset(side)` and
    `result()`.
    """

    def __init__(
        self,
        feature_extractor=None,
        weights="imagenet",
        batch_size=64,
        name=None,
        dtype=None,
    ):
        if name is None:
            name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()
        if not isinstance(name, str) or not name:
            raise TypeError(f"`name` must be a non-empty string, got {name!r}.")
        self.name = name
        arguments.check_positive_int(batch_size, "batch_size")
        self._extractor_spec = feature_extractor
        self.weights = (
            os.fspath(weights) if isinstance(weights, os.PathLike) else weights
        )
        self.batch_size = int(batch_size)
        if _is_lazy_spec(feature_extractor):
            # Built-in extractors are built on first use (no Inception
            # download or digits training at construction), but the spec is
            # checked now.
            _check_lazy_spec(feature_extractor)
            if feature_extractor is None or feature_extractor.lower() != "digits":
                check_inception_weights(weights)
            self.feature_extractor = None
        else:
            self.feature_extractor = get_feature_extractor(
                feature_extractor, weights=weights, batch_size=self.batch_size
            )
        self._sample_shape = None
        self._feature_dim = None
        self._counts = {REAL: 0, GENERATED: 0}

    # ----------------------------------------------------------- extraction
    def get_feature_extractor(self):
        """The resolved `FeatureExtractor` (built on first call)."""
        if self.feature_extractor is None:
            self.feature_extractor = get_feature_extractor(
                self._extractor_spec,
                weights=self.weights,
                batch_size=self.batch_size,
            )
        return self.feature_extractor

    def check_images(self, images, name="images"):
        """Validates `images` for this metric's extractor (rank, dtype,
        range, NaN) and against the per-image shape seen so far; returns
        them as numpy."""
        images = self.get_feature_extractor().validate(images, name)
        self._check_sample_shape(images, name)
        return images

    def extract_features(self, images, name="images"):
        """Validates `images` and returns their features, shape (n, d)."""
        images = self.check_images(images, name)
        return self.get_feature_extractor().extract_validated(images)

    def _check_sample_shape(self, images, name):
        shape = tuple(images.shape[1:])
        if self._sample_shape is None:
            self._sample_shape = (shape, name)
        elif self._sample_shape[0] != shape:
            raise ValueError(
                f"`{name}` has per-image shape {shape}, but `"
                f"{self._sample_shape[1]}` seen earlier by metric "
                f"'{self.name}' had per-image shape {self._sample_shape[0]}. "
                "Real and generated images must have the same shape "
                "(resize one set first); call `reset_state()` to start over."
            )

    # ------------------------------------------------------- not a Keras metric
    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"{type(self).__name__} (metric '{self.name}') is not a "
            "keras.metrics.Metric and cannot be passed to "
            "`model.compile(metrics=...)` or called like one: it compares "
            "real and generated images, accumulating their feature "
            "statistics eagerly on the host in float64, which a compiled "
            "training step cannot do (and `compile`'s metrics only see the "
            "training batch). Evaluate it during `fit` with "
            "keras_immiscible.callbacks.GenerativeEvaluation(real_images, "
            f"metrics=[...]) (logs 'val_{self.name}'), after training with "
            "keras_immiscible.metrics.evaluate_generator(model, "
            "real_images), or feed it yourself with "
            "update_state(real_images, generated_images) and result()."
        )

    def __repr__(self):
        return (
            f"{type(self).__name__}(name={self.name!r}, feature_extractor="
            f"{self._extractor_spec!r}, batch_size={self.batch_size})"
        )

    # -------------------------------------------------------------- updates
    def update_state(self, real_images=None, generated_images=None, sample_weight=None):
        """Adds a batch of real and/or generated images.

        Args:
            real_images: (n, ...) real images, or `None` to add none.
            generated_images: (m, ...) generated images, or `None`.
            sample_weight: not supported (must be `None`).

        The two sets may have different sizes and may be fed in any number
        of batches; the result only depends on the union of the batches.
        """
        if sample_weight is not None:
            raise ValueError(
                f"`sample_weight` is not supported by {type(self).__name__}; "
                f"got {sample_weight!r}."
            )
        if real_images is None and generated_images is None:
            raise ValueError(
                "Pass `real_images` and/or `generated_images`; both are None."
            )
        # Validate both sets before extracting anything (extraction can be
        # slow, and a bad second argument should fail fast).
        if real_images is not None:
            real_images = self.check_images(real_images, "real_images")
        if generated_images is not None:
            generated_images = self.check_images(generated_images, "generated_images")
        extractor = self.get_feature_extractor()
        real = gen = None
        if real_images is not None:
            real = extractor.extract_validated(real_images)
        if generated_images is not None:
            gen = extractor.extract_validated(generated_images)
        self.update_features(real, gen)

    def update_real(self, images):
        """Adds real images only (same as `update_state(images, None)`)."""
        self.update_state(real_images=images)

    def update_generated(self, images):
        """Adds generated images only."""
        self.update_state(generated_images=images)

    def update_features(self, real_features=None, generated_features=None):
        """Adds precomputed features, shape (n, d), of either set."""
        checked = []
        for side, feats, name in (
            (REAL, real_features, "real_features"),
            (GENERATED, generated_features, "generated_features"),
        ):
            if feats is None:
                continue
            feats = check_finite_samples(feats, name)
            if feats.ndim != 2:
                raise ValueError(f"`{name}` must have shape (n, d), got {feats.shape}.")
            if self._feature_dim is None:
                self._feature_dim = (feats.shape[1], name)
            elif self._feature_dim[0] != feats.shape[1]:
                raise ValueError(
                    f"`{name}` has {feats.shape[1]} features per sample, but "
                    f"`{self._feature_dim[1]}` seen earlier by metric "
                    f"'{self.name}' had {self._feature_dim[0]}."
                )
            checked.append((side, feats))
        for side, feats in checked:
            self._accumulate(side, feats)
            self._counts[side] += feats.shape[0]

    # ----------------------------------------------------------------- state
    @property
    def num_real(self):
        """Number of real samples seen since the last reset."""
        return self._counts[REAL]

    @property
    def num_generated(self):
        """Number of generated samples seen since the last reset."""
        return self._counts[GENERATED]

    def reset_state(self):
        """Forgets both sets."""
        self._reset(REAL)
        self._reset(GENERATED)
        self._counts = {REAL: 0, GENERATED: 0}
        self._sample_shape = None
        self._feature_dim = None

    def reset_generated(self):
        """Forgets the generated set only, keeping the real statistics (to
        evaluate new samples against the same real data)."""
        self._reset(GENERATED)
        self._counts[GENERATED] = 0
        if self._counts[REAL] == 0:
            self._sample_shape = None
            self._feature_dim = None

    def _accumulate(self, side, features):
        raise NotImplementedError

    def _reset(self, side):
        raise NotImplementedError

    def _check_counts(self, minimum):
        if self.num_real < minimum or self.num_generated < minimum:
            raise ValueError(
                f"{type(self).__name__} needs at least {minimum} real and "
                f"{minimum} generated samples, got {self.num_real} real and "
                f"{self.num_generated} generated. Call `update_state` first."
            )

    # ---------------------------------------------------------------- config
    def get_config(self):
        """Config of the metric.

        Built-in extractors appear as their spec (`None`, `"inception_v3"`,
        `"digits"`); a custom extractor (model or callable) appears as the
        object itself, so the config round-trips in-process but is not
        JSON-serializable.
        """
        return {
            "name": self.name,
            "feature_extractor": self._extractor_spec,
            "weights": self.weights,
            "batch_size": self.batch_size,
        }

    @classmethod
    def from_config(cls, config):
        """A new metric (with empty state) from `get_config()`'s output."""
        return cls(**config)


def _is_lazy_spec(spec):
    return spec is None or isinstance(spec, str)


def _check_lazy_spec(spec):
    if spec is None:
        return
    if spec.lower() not in ("inception", "inception_v3", "inceptionv3", "digits"):
        raise ValueError(
            "`feature_extractor` must be None/'inception_v3', 'digits', a "
            f"keras.Model or a callable, got {spec!r}."
        )
