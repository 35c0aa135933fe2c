"""Input pipelines for the user's own data: image folders and numpy arrays.

`from_directory` reads a folder of image files, `from_numpy` wraps arrays
already in memory. Both return batched `tf.data.Dataset`s of float32 images
in [0, 1] (or uint8) that `model.fit` takes on every Keras backend.
"""

import os

import keras
import numpy as np

from keras_immiscible.data import pipeline
from keras_immiscible.utils import arguments

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
COLOR_MODES = ("rgb", "grayscale")
CROPS = ("center", None)
INTERPOLATIONS = ("area", "bilinear", "bicubic", "nearest", "lanczos3")

# Pillow modes that have no faithful RGB or grey reading.
_REFUSED_MODES = {
    "LA": "grey + alpha channels",
    "La": "grey + alpha channels",
    "PA": "a palette with an alpha channel",
    "RGBA": "an alpha channel (RGBA)",
    "RGBa": "an alpha channel (RGBA)",
    "CMYK": "four colour channels (CMYK)",
}
# The formats TensorFlow decodes, by Pillow's names.
_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "BMP": "bmp", "GIF": "gif"}


def check_image_files(paths):
    """The format of each image file; a clear error for files that cannot
    be used.

    Every file is opened with Pillow and its header read (not decoded): a
    file that is not a PNG, JPEG, BMP or GIF image (whatever its extension
    says) or cannot be read, and an image with an alpha channel (grey +
    alpha, RGBA) or four colour channels (CMYK JPEG) raise a `ValueError`
    that names the files. Those channels have no faithful RGB or grey
    reading (dropping an alpha channel keeps whatever colour the transparent
    pixels happen to store), so they are refused instead of converted.

    Args:
        paths: the image files.

    Returns:
        The list of formats (`"png"`, `"jpeg"`, `"bmp"`, `"gif"`).
    """
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(
            "`from_directory` checks the image files with Pillow: `pip install pillow`."
        ) from e
    formats, problems = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                kind, mode = _FORMATS.get(image.format), image.mode
        except (OSError, SyntaxError, ValueError) as e:
            kind, mode = None, str(e)
        formats.append(kind)
        if kind is None:
            problems.append(
                f"{path!r} is not an image: it has an image extension, but "
                "it is not a PNG, JPEG, BMP or GIF file that can be read "
                f"({mode}). Remove it from the folder, or give it its real "
                "extension."
            )
        elif mode in _REFUSED_MODES:
            problems.append(
                f"{path!r} has {_REFUSED_MODES[mode]}: images must have 1 "
                "(grey) or 3 (RGB) channels. Convert it first, e.g. with "
                "Pillow: Image.open(path).convert('RGB' or 'L').save(path)."
            )
    if problems:
        problems.sort()
        shown = "\n  ".join(problems[:5])
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ValueError(
            f"{len(problems)} of the {len(paths)} image files cannot be "
            f"used:\n  {shown}{more}"
        )
    return formats


def _check_directory(directory):
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"`directory` must be a path to a folder of images, got {directory!r}."
        )
    directory = os.fspath(directory)
    if not os.path.exists(directory):
        raise FileNotFoundError(f"`directory` {directory!r} does not exist.")
    if not os.path.isdir(directory):
        raise NotADirectoryError(
            f"`directory` {directory!r} is not a folder (pass the folder that "
            "holds the images)."
        )
    return directory


def _check_no_unlabelled_files(directory):
    """`with_labels=True` reads the class of an image from its top-level
    subfolder (Keras ignores images lying directly in `directory`): refuse
    those images rather than drop them silently."""
    loose = sorted(
        name
        for name in os.listdir(directory)
        if name.lower().endswith(IMAGE_EXTENSIONS)
        and os.path.isfile(os.path.join(directory, name))
    )
    if loose:
        raise ValueError(
            "`with_labels=True` takes the class of each image from its "
            f"top-level subfolder, but {os.path.join(directory, loose[0])!r} "
            f"lies directly in {directory!r}. Put every image in a class "
            "subfolder (directory/class_name/...), or use with_labels=False."
        )


def from_directory(
    directory,
    image_size,
    batch_size,
    *,
    color_mode="rgb",
    crop="center",
    interpolation="area",
    with_labels=False,
    shuffle=True,
    cache=True,
    drop_remainder=True,
    flip=False,
    follow_links=False,
    seed=None,
    dtype="float32",
):
    """A folder of images (searched recursively) as a `tf.data.Dataset`.

    The files are listed, decoded, cropped and resized by
    `keras.utils.image_dataset_from_directory` (PNG, JPEG, BMP and GIF files,
    first frame; other files are ignored, hidden ones are not): each image
    is read as RGB, cropped to the largest centered box with the aspect
    ratio of `image_size` (`crop_to_aspect_ratio`, unless `crop=None`) and
    resized with `interpolation`. On top of that, this function adds what the
    library's pipelines share (see `keras_immiscible.data.pipeline`): uint8
    images up to the cache, a shuffle buffer reshuffled every epoch after
    the cache, horizontal flips, float32 output in [0, 1], and the checks
    below.

    The header of every file is read when the dataset is built (see
    `check_image_files`): a file named like an image that is not one, and
    an image with an alpha channel or four channels (RGBA, grey + alpha,
    CMYK) raise a `ValueError` naming the files, before any training. Grey
    images are read as RGB (three equal channels), and in
    `color_mode="grayscale"` every image is converted to grey (luma) after
    the resize.

    Args:
        directory: path of the folder.
        image_size: int (square images) or `(height, width)`.
        batch_size: int, images per batch.
        color_mode: `"rgb"` (3 channels) or `"grayscale"` (1 channel).
        crop: `"center"` (keep the aspect ratio: crop the centered box, then
            resize) or None (resize the whole image, distorting it when its
            aspect ratio differs).
        interpolation: the resize, one of `"area"` (default: when shrinking,
            each pixel averages the pixels it covers, so downsampled photos
            do not alias), `"bilinear"`, `"bicubic"`, `"nearest"` or
            `"lanczos3"` (`tf.image.resize` methods, not antialiased: they
            alias when shrinking by more than 2x; prefer them for
            upsampling).
        with_labels: yield `(images, labels)`, the int32 label of an image
            being the index of its top-level subfolder in the sorted list of
            subfolder names (`directory/cats/...` and `directory/dogs/...`
            give labels 0 and 1). The names are in `dataset.class_names`.
        shuffle: True (shuffle the file order once, then a 10,000-image
            buffer reshuffled every epoch), False (sorted path order), or an
            int buffer size.
        cache: True (keep the decoded images in memory, as uint8), False
            (decode every epoch), or a file path for an on-disk cache.
        drop_remainder: drop the last, smaller batch.
        flip: random horizontal flips (probability 1/2 per image and epoch).
        follow_links: follow symbolic links to folders.
        seed: int seed of the shuffles and flips.
        dtype: `"float32"` (images in [0, 1]) or `"uint8"`.

    Returns:
        A `tf.data.Dataset` of `(batch, height, width, channels)` images, or
        of `(images, labels)` pairs, with `dataset.file_paths` (the files:
        sorted, or in the seeded one-time shuffle when `shuffle` is on) and,
        with labels, `dataset.class_names`.

    Example:

    ```python
    dataset = keras_immiscible.data.from_directory(
        "my_photos/", image_size=64, batch_size=64, flip=True)
    model.fit(dataset, epochs=50)
    ```
    """
    directory = _check_directory(directory)
    size = pipeline.check_image_size(image_size, allow_pair=True)
    batch_size = arguments.check_positive_int(batch_size, "batch_size")
    arguments.check_choice(color_mode, "color_mode", COLOR_MODES)
    arguments.check_choice(crop, "crop", CROPS)
    arguments.check_choice(interpolation, "interpolation", INTERPOLATIONS)
    with_labels = arguments.check_bool(with_labels, "with_labels")
    shuffle_buffer = pipeline.check_shuffle(shuffle)
    cache = pipeline.check_cache(cache)
    drop_remainder = arguments.check_bool(drop_remainder, "drop_remainder")
    flip = arguments.check_bool(flip, "flip")
    follow_links = arguments.check_bool(follow_links, "follow_links")
    seed = arguments.check_seed(seed)
    dtype = pipeline.check_dtype(dtype)
    tf = pipeline.import_tensorflow("`from_directory`")
    if with_labels:
        _check_no_unlabelled_files(directory)

    images = keras.utils.image_dataset_from_directory(
        directory,
        labels="inferred" if with_labels else None,
        label_mode="int" if with_labels else None,
        color_mode="rgb",  # TensorFlow decodes BMP and GIF files to RGB only
        batch_size=None,
        image_size=size,
        shuffle=bool(shuffle_buffer),
        seed=seed,
        interpolation=interpolation,
        follow_links=follow_links,
        crop_to_aspect_ratio=crop == "center",
        data_format="channels_last",
        verbose=False,
    )
    paths = list(images.file_paths)
    if drop_remainder and len(paths) < batch_size:
        raise ValueError(
            f"`directory` holds {len(paths)} images, fewer than "
            f"batch_size={batch_size}: with drop_remainder=True every batch "
            "would be dropped. Lower `batch_size` or pass "
            "drop_remainder=False."
        )
    check_image_files(paths)

    def to_uint8(image):
        if color_mode == "grayscale":
            image = tf.image.rgb_to_grayscale(image)
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    if with_labels:
        dataset = images.map(lambda image, label: (to_uint8(image), label))
    else:
        dataset = images.map(to_uint8)
    dataset = pipeline.finish(
        dataset,
        batch_size=batch_size,
        shuffle_buffer=shuffle_buffer,
        cache=cache,
        flip=flip,
        drop_remainder=drop_remainder,
        seed=seed,
        dtype=dtype,
        with_labels=with_labels,
    )
    dataset.file_paths = paths
    if with_labels:
        dataset.class_names = list(images.class_names)
    return dataset


def _check_images(images):
    try:
        images = np.asarray(images)
    except Exception as e:
        raise TypeError(
            f"`images` must be an array of images, got {type(images)}."
        ) from e
    if images.ndim != 4 or 0 in images.shape:
        hint = (
            " For grayscale images of shape (N, H, W), add a channel axis: "
            "images[..., None]."
            if images.ndim == 3
            else ""
        )
        raise ValueError(
            "`images` must have shape (num_images, height, width, channels) "
            f"with no zero dimension, got {images.shape}.{hint}"
        )
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(
            f"`images` must be uint8 (0-255) or float (0-1), got dtype {images.dtype}."
        )
    finite = np.isfinite(images)
    if not finite.all():
        raise ValueError(
            f"`images` contains {int(finite.size - finite.sum())} NaN or "
            "infinite value(s)."
        )
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"Float `images` must lie in [0, 1], got values in [{low:.4g}, "
            f"{high:.4g}]. Divide 0-255 data by 255, or pass uint8 images."
        )
    return images.astype("float32", copy=False)


def _check_labels(labels, count):
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != count:
        raise ValueError(
            f"`labels` must have shape ({count},), one int per image, got "
            f"{labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"`labels` must be ints (class indices), got dtype {labels.dtype}."
        )
    return labels.astype("int32")


def from_numpy(
    images,
    batch_size,
    *,
    labels=None,
    shuffle=True,
    drop_remainder=True,
    flip=False,
    seed=None,
    dtype="float32",
    initial_epoch=0,
):
    """Arrays of images (and labels) as a batched `tf.data.Dataset`.

    The arrays stay in memory; each batch is gathered from a shuffled index
    order, so shuffling needs no copy of the images.

    The order and the flips of an epoch are a function of `(seed, epoch)`
    only, where `epoch` counts the passes over the dataset (every iterator
    that yields a batch is one pass, including the look at the first batch
    that `fit` takes on an unbuilt model), starting at `initial_epoch`. So two
    datasets built with the same seed yield the same batches pass after
    pass, and a run restarted at epoch `e` (e.g. by
    `keras_immiscible.callbacks.BackupAndRestore`) gets the batches of epoch
    `e` again by building its dataset with `initial_epoch=e`: see the
    example.

    Args:
        images: array `(N, height, width, channels)`, uint8 in [0, 255] or
            float in [0, 1] (checked: no NaN, no value out of range).
        batch_size: int, images per batch.
        labels: None, or N int class labels; the dataset then yields
            `(images, labels)` with int32 labels.
        shuffle: True (a full reshuffle every epoch), False (array order),
            or an int (accepted for symmetry with the other loaders: only
            indices are shuffled here, so every epoch is a full reshuffle).
        drop_remainder: drop the last, smaller batch.
        flip: random horizontal flips (probability 1/2 per image and epoch).
        seed: int seed of the shuffles and flips (None: a random one).
        dtype: `"float32"` (images in [0, 1]) or `"uint8"` (float input is
            rounded to 0-255).
        initial_epoch: the epoch whose order and flips the first pass gets
            (keyword only; default 0).

    Returns:
        A `tf.data.Dataset` of `(batch, height, width, channels)` images, or
        of `(images, labels)` pairs.

    Example:

    ```python
    images = keras_immiscible.data.load_digits()
    dataset = keras_immiscible.data.from_numpy(images, batch_size=128)

    # A run that can be killed and restarted: the restarted run's data
    # continues at the epoch the backup holds.
    backup = keras_immiscible.callbacks.BackupAndRestore("backup/", 100)
    dataset = keras_immiscible.data.from_numpy(
        images, 128, seed=0, initial_epoch=backup.initial_epoch)
    model.fit(dataset, epochs=20, callbacks=[backup])
    ```
    """
    images = _check_images(images)
    count = images.shape[0]
    batch_size = arguments.check_positive_int(batch_size, "batch_size")
    with_labels = labels is not None
    if with_labels:
        labels = _check_labels(labels, count)
    shuffle = bool(pipeline.check_shuffle(shuffle, default_buffer=count))
    drop_remainder = arguments.check_bool(drop_remainder, "drop_remainder")
    flip = arguments.check_bool(flip, "flip")
    seed = arguments.check_seed(seed)
    dtype = pipeline.check_dtype(dtype)
    initial_epoch = arguments.check_int(initial_epoch, "initial_epoch", minimum=0)
    if drop_remainder and count < batch_size:
        raise ValueError(
            f"`images` holds {count} images, fewer than batch_size="
            f"{batch_size}: with drop_remainder=True every batch would be "
            "dropped. Lower `batch_size` or pass drop_remainder=False."
        )
    tf = pipeline.import_tensorflow("`from_numpy`")
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])

    image_tensor = tf.convert_to_tensor(images)
    label_tensor = tf.convert_to_tensor(labels) if with_labels else None
    num_batches = count // batch_size if drop_remainder else -(-count // batch_size)
    # The pass counter: the first batch of every pass increments it once,
    # so each pass (a peek by Keras included) knows its epoch.
    counter = tf.Variable(
        initial_epoch - 1,
        dtype=tf.int64,
        trainable=False,
        name="from_numpy_epoch",
    )
    base_key = tf.constant([seed, 0x5EED], dtype=tf.int64)

    def one_pass(epoch):
        key = tf.random.experimental.stateless_fold_in(base_key, epoch)

        order = tf.range(count, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, key)
        batches = tf.data.Dataset.from_tensor_slices(order).batch(
            batch_size, drop_remainder=drop_remainder
        )
        return tf.data.Dataset.zip((batches, tf.data.Dataset.range(num_batches))).map(
            lambda index, number: (index, key, number)
        )

    def gather(index, key, number):
        batch = tf.gather(image_tensor, index)
        if flip:
            coins = tf.random.stateless_uniform(
                tf.shape(index),
                tf.random.experimental.stateless_fold_in(key, number + 1),
            )
            mirrored = tf.reshape(coins < 0.5, [-1, 1, 1, 1])
            batch = tf.where(mirrored, tf.reverse(batch, axis=[2]), batch)
        if with_labels:
            return batch, tf.gather(label_tensor, index)
        return batch

    dataset = (
        tf.data.Dataset.range(1)
        .map(lambda _: counter.assign_add(1))
        .flat_map(one_pass)
        .apply(tf.data.experimental.assert_cardinality(num_batches))
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    )
    dataset = pipeline.finish_batches(
        dataset, flip=False, seed=seed, dtype=dtype, with_labels=with_labels
    )
    # tf.data holds only a handle to the counter: keep it alive with the
    # dataset.
    dataset._epoch_counter = counter
    return dataset
