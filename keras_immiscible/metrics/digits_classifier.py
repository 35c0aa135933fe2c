"""A small digits classifier whose penultimate layer is a feature extractor.

Inception-V3 features mean little for 8x8 grey digits (and cost a 299x299
forward pass per image). For the embedded digits data set
(`keras_immiscible.data.load_digits`) this module trains a small MLP
classifier on the bundled *train* split and uses its 64-d penultimate layer
as the feature space of FID/KID ("classifier FID", as in the digits and
MNIST literature).

Determinism: the initial weights come from a numpy generator with a fixed
seed, the training order from another one, and training uses no dropout, so
the recipe is the same on every backend (the trained weights agree up to
floating-point round-off between backends). Training takes a few seconds on
one CPU core.

Caching: the trained weights are kept in memory (per process) and on disk as
`<cache_dir>/digits_classifier_<key>.weights.h5`, where `cache_dir` defaults
to `$KERAS_HOME/keras_immiscible` (`~/.keras/keras_immiscible`) and `<key>`
is a hash of the architecture and training recipe (not of the backend: a
file trained under TensorFlow is reused under JAX and PyTorch). Change the
recipe and the key changes with it; delete the file (or pass
`retrain=True`) to train again. If the directory is not writable the
weights stay in memory only, with a warning.
"""

import hashlib
import json
import os
import warnings

import keras
import numpy as np

from keras_immiscible.metrics.feature_extractors import FeatureExtractor
from keras_immiscible.metrics.feature_extractors import check_finite_samples
from keras_immiscible.metrics.feature_extractors import images_to_unit_float

# Everything that determines the trained weights. Changing anything here
# changes the cache key.
RECIPE = {
    "name": "digits_mlp",
    "version": 1,
    "input_shape": [8, 8, 1],
    "hidden_units": [128, 64],
    "num_classes": 10,
    "activation": "relu",
    "init": "glorot_uniform_numpy",
    "init_seed": 0,
    "data": "load_digits(split='train', seed=0)",
    "optimizer": "adam",
    "learning_rate": 0.01,
    "batch_size": 256,
    "epochs": 50,
    "order_seed": 1,
}

FEATURE_DIM = RECIPE["hidden_units"][-1]

_CACHE = {}


def recipe_key():
    """Backend-independent hash of the architecture and training recipe."""
    text = json.dumps(RECIPE, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def default_cache_dir():
    """`$KERAS_HOME/keras_immiscible`, `~/.keras/keras_immiscible` by default."""
    keras_home = os.environ.get(
        "KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")
    )
    return os.path.join(keras_home, "keras_immiscible")


def _build_classifier():
    inputs = keras.Input(shape=tuple(RECIPE["input_shape"]), name="images")
    x = keras.layers.Flatten(name="flatten")(inputs)
    units = RECIPE["hidden_units"]
    for i, width in enumerate(units):
        name = "features" if i == len(units) - 1 else f"hidden_{i}"
        x = keras.layers.Dense(width, activation=RECIPE["activation"], name=name)(x)
    features = x
    logits = keras.layers.Dense(RECIPE["num_classes"], name="logits")(features)
    classifier = keras.Model(inputs, logits, name="digits_classifier")
    feature_model = keras.Model(inputs, features, name="digits_features")
    return classifier, feature_model


def _initialize(classifier):
    """Glorot-uniform kernels and zero biases from a seeded numpy generator
    (the same numbers on every backend)."""
    rng = np.random.default_rng(RECIPE["init_seed"])
    values = []
    for weight in classifier.weights:
        shape = tuple(weight.shape)
        if len(shape) == 2:
            limit = np.sqrt(6.0 / (shape[0] + shape[1]))
            values.append(rng.uniform(-limit, limit, shape).astype("float32"))
        else:
            values.append(np.zeros(shape, dtype="float32"))
    classifier.set_weights(values)


def _train(classifier, verbose):
    from keras_immiscible.data import load_digits

    images, labels = load_digits(split="train", return_labels=True, seed=0)
    rng = np.random.default_rng(RECIPE["order_seed"])
    order = np.concatenate(
        [rng.permutation(len(images)) for _ in range(RECIPE["epochs"])]
    )
    classifier.compile(
        optimizer=keras.optimizers.Adam(RECIPE["learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # One pass over a pre-shuffled concatenation of all epochs: the order is
    # fixed by `order_seed`, not by the backend's data pipeline.
    classifier.fit(
        images[order],
        labels[order],
        batch_size=RECIPE["batch_size"],
        epochs=1,
        shuffle=False,
        verbose=verbose,
    )


def load_digits_classifier(cache_dir=None, retrain=False, verbose=0):
    """The trained digits classifier and its feature model.

    Args:
        cache_dir: directory of the `.weights.h5` cache; defaults to
            `default_cache_dir()`.
        retrain: train again even when cached (and overwrite the file).
        verbose: 1 prints a line when training or loading from disk.

    Returns:
        `(classifier, feature_model)`: two `keras.Model`s sharing layers,
        mapping (N, 8, 8, 1) float [0, 1] images to 10 logits and to the
        64-d penultimate (ReLU) features.
    """
    key = recipe_key()
    if not retrain and key in _CACHE:
        return _CACHE[key]
    cache_dir = default_cache_dir() if cache_dir is None else os.fspath(cache_dir)
    path = os.path.join(cache_dir, f"digits_classifier_{key}.weights.h5")
    classifier, feature_model = _build_classifier()
    if not retrain and os.path.exists(path):
        if verbose:
            print(f"Loading the digits feature classifier from {path}")
        classifier.load_weights(path)
    else:
        if verbose:
            print(
                "Training the digits feature classifier (a few seconds, "
                f"once; cached at {path})"
            )
        _initialize(classifier)
        _train(classifier, verbose=0)
        try:
            os.makedirs(cache_dir, exist_ok=True)
            # Write to a temporary file first so that a concurrent reader
            # never sees a half-written file.
            tmp = os.path.join(
                cache_dir, f"digits_classifier_{key}.tmp{os.getpid()}.weights.h5"
            )
            classifier.save_weights(tmp)
            os.replace(tmp, path)
        except OSError as e:
            warnings.warn(
                f"Could not cache the digits classifier at {path} ({e}); "
                "keeping it in memory only. Pass a writable `cache_dir`.",
                stacklevel=2,
            )
    _CACHE[key] = (classifier, feature_model)
    return _CACHE[key]


def to_8x8_digits(images):
    """(N, 8k, 8k, C) images in [0, 1] averaged over k x k blocks and the
    channels: the (N, 8, 8, 1) digits they were upsampled from (exactly for
    `load_digits(image_size=8k)`, whose upsampling repeats pixels; a
    smoothed copy for `interpolation="bilinear"`)."""
    n, h, w, c = images.shape
    f = h // 8
    return images.reshape(n, 8, f, 8, f, c).mean(axis=(2, 4, 5))[..., None]


class DigitsFeatureExtractor(FeatureExtractor):
    """64-d penultimate features of the digits classifier.

    Maps (N, 8, 8, 1) images (float in [0, 1] or uint8 0-255) to (N, 64)
    float32 features. Upsampled digits, (N, 8k, 8k, C) such as
    `load_digits(image_size=16)` or a model's samples at that size (also
    repeated into 3 channels), are first averaged back to 8x8 (over k x k
    blocks and the channels; see `to_8x8_digits`). `classify(images)`
    returns the predicted labels. Build it with `digits_feature_extractor()`.

    Example:

    >>> extractor = keras_immiscible.metrics.digits_feature_extractor()
    >>> digits = keras_immiscible.data.load_digits(image_size=16)
    >>> extractor(digits[:4]).shape
    (4, 64)
    """

    def __init__(self, classifier, feature_model, batch_size=256):
        super().__init__(batch_size)
        self.classifier = classifier
        self.model = feature_model

    @property
    def source(self):
        return ("digits", recipe_key())

    def validate(self, images, name="images"):
        images = check_finite_samples(images, name)
        shape = tuple(images.shape[1:])
        if len(shape) != 3 or shape[0] != shape[1] or shape[0] % 8 or not shape[0]:
            raise ValueError(
                f"`{name}` must be digits images of shape (N, 8, 8, 1), or "
                "upsampled ones (N, 8k, 8k, C), got shape "
                f"{tuple(images.shape)}."
            )
        images_to_unit_float(images, name)  # range check only
        return images

    def _as_8x8(self, images):
        x = images_to_unit_float(images, "images")
        return x if x.shape[1:] == (8, 8, 1) else to_8x8_digits(x)

    def extract(self, batch):
        return self.model.predict_on_batch(self._as_8x8(batch))

    def classify(self, images):
        """Predicted class (0-9) of every image, as an int numpy array."""
        images = self.validate(images)
        logits = self.classifier.predict_on_batch(self._as_8x8(images))
        return np.argmax(keras.ops.convert_to_numpy(logits), axis=-1)


def digits_feature_extractor(cache_dir=None, retrain=False, verbose=0):
    """Feature extractor for the embedded 8x8 digits (trained on first use).

    Returns a `DigitsFeatureExtractor`: a callable mapping (N, 8, 8, 1)
    images (float [0, 1] or uint8) to (N, 64) penultimate features of a small
    classifier trained on `load_digits(split="train")` (held-out accuracy
    above 95%). Pass it as `feature_extractor=` to `FID`/`KID`, or use
    `feature_extractor="digits"`.

    See the module docstring for determinism and the on-disk cache
    (`cache_dir`, `retrain`).
    """
    classifier, feature_model = load_digits_classifier(
        cache_dir=cache_dir, retrain=retrain, verbose=verbose
    )
    return DigitsFeatureExtractor(classifier, feature_model)
