"""Shared pieces of the `tf.data` input pipelines: the checks of their own
arguments (the general ones are in `keras_immiscible.utils.arguments`), the
center crop and resize of images, and the batching stage.

Every loader of `keras_immiscible.data` produces the same kind of pipeline:

    source -> decode, crop, resize (uint8) -> cache -> shuffle -> batch
           -> horizontal flip -> cast to the output dtype -> prefetch

Images stay uint8 up to the cache, so a cached data set takes a quarter of
the memory it would take as float32; the cast to float32 in [0, 1] happens
per batch, after the cache. Augmentation (the flip) comes after the cache and
the shuffle, so every epoch sees a new shuffle and new flips.

TensorFlow is imported lazily, inside the functions: `import keras_immiscible`
works without it.
"""

import numbers
import os

import numpy as np

from keras_immiscible.utils import arguments

OUTPUT_DTYPES = ("float32", "uint8")
DEFAULT_SHUFFLE_BUFFER = 10_000


def import_tensorflow(what):
    """Imports TensorFlow, or raises an ImportError saying how to get it."""
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(
            f"{what} builds a tf.data pipeline and needs TensorFlow: "
            "`pip install tensorflow-cpu` (or the extra "
            "`keras-immiscible[tensorflow-cpu]`). It works with every Keras "
            "backend."
        ) from e
    return tf


# --------------------------------------------------------- argument checks


def check_image_size(image_size, name="image_size", allow_pair=False):
    """Returns `(height, width)` from an int (or a pair, if allowed)."""
    if isinstance(image_size, (tuple, list)) and allow_pair:
        if len(image_size) != 2:
            raise ValueError(
                f"`{name}` must be an int or a pair (height, width), got "
                f"{image_size!r}."
            )
        return (
            arguments.check_positive_int(image_size[0], name),
            arguments.check_positive_int(image_size[1], name),
        )
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, numbers.Integral)
        or image_size <= 0
    ):
        expected = (
            "an int or a pair (height, width)"
            if allow_pair
            else ("a positive int (the side of the square images)")
        )
        error = (
            ValueError
            if isinstance(image_size, numbers.Integral)
            else (arguments.ArgumentTypeError)
        )
        raise error(f"`{name}` must be {expected}, got {image_size!r}.")
    return int(image_size), int(image_size)


def check_shuffle(shuffle, default_buffer=DEFAULT_SHUFFLE_BUFFER):
    """Returns the shuffle buffer size, 0 meaning no shuffling."""
    if isinstance(shuffle, (bool, np.bool_)):
        return default_buffer if shuffle else 0
    if isinstance(shuffle, numbers.Integral) and shuffle > 0:
        return int(shuffle)
    raise ValueError(
        "`shuffle` must be True, False or a positive int (the shuffle buffer "
        f"size), got {shuffle!r}."
    )


def check_cache(cache):
    """Returns False, True (cache in memory) or a file path prefix."""
    if isinstance(cache, (bool, np.bool_)):
        return bool(cache)
    if isinstance(cache, (str, os.PathLike)) and os.fspath(cache):
        return os.fspath(cache)
    raise ValueError(
        "`cache` must be True (in memory), False, or a file path for an "
        f"on-disk cache, got {cache!r}."
    )


def check_dtype(dtype):
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(
            f"`dtype` must be one of {OUTPUT_DTYPES} (float32 images in "
            f"[0, 1] or uint8 images in [0, 255]), got {dtype!r}."
        )
    return dtype


# ------------------------------------------------------------ crop, resize


def center_crop_box(height, width, target_height, target_width):
    """The largest centered box with the aspect ratio of the target.

    Returns `(top, left, crop_height, crop_width)`. Works on Python ints and
    on scalar tensors (integer arithmetic only), so the same formula serves
    the tf.data pipelines and the tests' numpy references.
    """
    crop_height = _minimum(height, (width * target_height) // target_width)
    crop_width = _minimum(width, (height * target_width) // target_height)
    return (
        (height - crop_height) // 2,
        (width - crop_width) // 2,
        crop_height,
        crop_width,
    )


def _minimum(a, b):
    if isinstance(a, numbers.Integral) and isinstance(b, numbers.Integral):
        return min(a, b)
    import tensorflow as tf

    return tf.minimum(a, b)


def crop_and_resize(image, box, size):
    """Crops `box` out of an HWC image and resizes it to `size`, as uint8.

    `box` is `(top, left, height, width)`, or None for the whole image. The
    resize is bilinear with antialiasing, so downsampling averages over the
    covered pixels instead of aliasing; the result is rounded back to uint8.
    """
    import tensorflow as tf

    if box is not None:
        top, left, crop_height, crop_width = box
        image = image[top : top + crop_height, left : left + crop_width]
    image = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


# --------------------------------------------------------------- batching


def finish(
    dataset,
    *,
    batch_size,
    shuffle_buffer,
    cache,
    flip,
    drop_remainder,
    seed,
    dtype,
    with_labels,
):
    """Cache, shuffle, batch, flip, cast and prefetch a per-image dataset.

    `dataset` yields HWC images (uint8 or float32), or `(image, label)` pairs
    when `with_labels`.
    """
    if cache is True:
        dataset = dataset.cache()
    elif cache:
        dataset = dataset.cache(cache)
    if shuffle_buffer:
        dataset = dataset.shuffle(
            shuffle_buffer, seed=seed, reshuffle_each_iteration=True
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return finish_batches(
        dataset, flip=flip, seed=seed, dtype=dtype, with_labels=with_labels
    )


def finish_batches(dataset, *, flip, seed, dtype, with_labels):
    """Flip, cast and prefetch a dataset of NHWC batches."""
    import tensorflow as tf

    def images_only(function):
        if with_labels:
            return lambda images, labels: (function(images), labels)
        return function

    if flip:
        dataset = random_flip(dataset, seed, with_labels)
    dataset = dataset.map(
        images_only(lambda images: to_output_dtype(images, dtype)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def random_flip(dataset, seed, with_labels):
    """Mirrors each image of each batch left-right with probability 1/2.

    The coin flips come from a seeded stream (`tf.data.Dataset.random`) that
    draws new values every epoch, so a seeded pipeline is reproducible while
    every epoch still sees different flips.
    """
    import tensorflow as tf

    coins = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    coins = coins.batch(2)

    def flip_batch(element, key):
        images = element[0] if with_labels else element
        count = tf.shape(images)[0]
        draws = tf.random.stateless_uniform([count], seed=key)
        mirrored = tf.reshape(draws < 0.5, [-1, 1, 1, 1])
        images = tf.where(mirrored, tf.reverse(images, axis=[2]), images)
        return (images, element[1]) if with_labels else images

    dataset = tf.data.Dataset.zip((dataset, coins))
    return dataset.map(flip_batch, num_parallel_calls=tf.data.AUTOTUNE)


def to_output_dtype(images, dtype):
    """uint8 or float images to float32 in [0, 1] or uint8 in [0, 255]."""
    import tensorflow as tf

    if dtype == "float32":
        if images.dtype == tf.uint8:
            return tf.cast(images, tf.float32) / 255.0
        return tf.cast(images, tf.float32)
    if images.dtype == tf.uint8:
        return images
    scaled = tf.round(tf.clip_by_value(tf.cast(images, tf.float32), 0, 1) * 255)
    return tf.cast(scaled, tf.uint8)
