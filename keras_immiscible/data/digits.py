"""scikit-learn's bundled 8x8 handwritten digits, as images.

The data ships inside scikit-learn (1,797 images of 8x8 pixels with 17 grey
levels), so it loads with no network. It is the library's default data set
for examples, tests and CPU-scale benchmarks, at 8x8 or upsampled to 16x16
or 32x32 to try larger images on a CPU.
"""

import keras
import numpy as np

from keras_immiscible.data import pipeline
from keras_immiscible.utils import arguments

IMAGE_SIZES = (8, 16, 32)
INTERPOLATIONS = ("nearest", "bilinear")


def load_digits(
    split="all",
    dtype="float32",
    return_labels=False,
    seed=0,
    *,
    image_size=8,
    interpolation="nearest",
):
    """Loads the bundled digits as (N, S, S, 1) images, S = `image_size`.

    At `image_size=16` or `32` the 8x8 images are upsampled. The default,
    nearest-neighbour upsampling, repeats every pixel in a 2x2 or 4x4 block:
    it invents no grey level (the values stay the 17 levels of the data),
    and averaging each block gives back the 8x8 image exactly, so samples of
    a model trained at 16x16 or 32x32 can be scored with the 8x8 digits
    metrics (`keras_immiscible.metrics`) after a block average. `"bilinear"`
    (`keras.ops.image.resize`: half-pixel centres, edges clamped) gives smooth
    strokes instead, closer to the look of natural images, at the price of
    new grey levels and no exact way back to 8x8.

    Args:
        split: `"all"` (1,797 images), `"train"` (the first 80% of a fixed
            shuffle) or `"test"` (the remaining 20%).
        dtype: `"float32"` for values in [0, 1] or `"uint8"` for 0-255.
        return_labels: also return the int32 class labels (0-9).
        seed: seed of the fixed shuffle behind the train/test split.
        image_size: 8 (the data as it is), 16 or 32 (upsampled).
        interpolation: `"nearest"` or `"bilinear"`, for upsampling.

    Returns:
        `images`, or `(images, labels)` with `return_labels=True`.

    Example:

    >>> images = load_digits()
    >>> images.shape, images.dtype
    ((1797, 8, 8, 1), dtype('float32'))
    >>> load_digits(image_size=32).shape
    (1797, 32, 32, 1)
    """
    arguments.check_choice(split, "split", ("all", "train", "test"))
    pipeline.check_dtype(dtype)
    arguments.check_choice(image_size, "image_size", IMAGE_SIZES)
    arguments.check_choice(interpolation, "interpolation", INTERPOLATIONS)
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise ImportError(
            "The embedded digits come with scikit-learn: "
            "`pip install scikit-learn` (or `keras-immiscible[digits]`)."
        ) from e
    bunch = sklearn_digits()
    images = bunch.images.astype("float32") / 16.0
    labels = bunch.target.astype("int32")
    if split != "all":
        order = np.random.default_rng(seed).permutation(len(images))
        cut = int(0.8 * len(images))
        keep = order[:cut] if split == "train" else order[cut:]
        images, labels = images[keep], labels[keep]
    images = upsample(images, image_size // 8, interpolation)[..., None]
    if dtype == "uint8":
        images = np.round(images * 255.0).astype("uint8")
    return (images, labels) if return_labels else images


def upsample(images, factor, interpolation="nearest"):
    """Upsamples (N, H, W) float images by an integer `factor` along H and W.

    `keras.ops.image.resize` (half-pixel centres, no antialiasing, the same
    numbers on every backend); the result is a numpy array, clipped to
    [0, 1] for the bilinear case.

    Args:
        images: (N, H, W) float numpy array.
        factor: positive int.
        interpolation: `"nearest"` or `"bilinear"`.

    Returns:
        The (N, H * factor, W * factor) numpy array, of the dtype of `images`.
    """
    if factor == 1:
        return images
    out = keras.ops.image.resize(
        images[..., None],
        (images.shape[1] * factor, images.shape[2] * factor),
        interpolation=interpolation,
        antialias=False,
        data_format="channels_last",
    )
    out = np.clip(keras.ops.convert_to_numpy(out)[..., 0], 0.0, 1.0)
    return out.astype(images.dtype)


def digits_dataset(
    batch_size=128,
    image_size=8,
    split="all",
    *,
    interpolation="nearest",
    with_labels=False,
    shuffle=True,
    drop_remainder=True,
    seed=None,
    dtype="float32",
):
    """The bundled digits as a batched, shuffled `tf.data.Dataset`.

    `load_digits` followed by `from_numpy`. There is no flip option: a
    mirrored digit is not a digit.

    Args:
        batch_size: int, images per batch.
        image_size: 8, 16 or 32 (see `load_digits`).
        split: `"all"`, `"train"` or `"test"` (see `load_digits`).
        interpolation: `"nearest"` or `"bilinear"` upsampling.
        with_labels: yield `(images, labels)` with int32 labels 0-9.
        shuffle: True (a full reshuffle every epoch), False, or an int
            shuffle-buffer size.
        drop_remainder: drop the last, smaller batch.
        seed: int seed of the shuffles (the train/test split is fixed).
        dtype: `"float32"` (images in [0, 1]) or `"uint8"`.

    Returns:
        A `tf.data.Dataset` of `(batch, image_size, image_size, 1)` images,
        or of `(images, labels)` pairs.

    Example:

    ```python
    dataset = keras_immiscible.data.digits_dataset(128, image_size=32)
    model.fit(dataset, epochs=5)
    ```
    """
    from keras_immiscible.data.local import from_numpy

    pipeline.check_dtype(dtype)
    with_labels = arguments.check_bool(with_labels, "with_labels")
    images, labels = load_digits(
        split,
        dtype=dtype,
        return_labels=True,
        image_size=image_size,
        interpolation=interpolation,
    )
    return from_numpy(
        images,
        batch_size,
        labels=labels if with_labels else None,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        seed=seed,
        dtype=dtype,
    )
