"""Input pipelines for the user's own data: image folders and numpy arrays.

`from_directory` reads a folder of image files, `from_numpy` wraps arrays
already in memory. Both return batched `tf.data.Dataset`s of float32 images
in [0, 1] (or uint8) that `model.fit` takes on every Keras backend.
"""

import os

import numpy as np

from keras_immiscible.data import pipeline

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
COLOR_MODES = {"rgb": 3, "grayscale": 1}
CROPS = ("center", None)


def list_image_files(directory, follow_links=False):
    """Sorted paths of the image files under `directory`, recursively.

    Files are recognized by their extension (png, jpg/jpeg, bmp, gif, any
    case); everything else is ignored. Hidden files and folders (names
    starting with ".") are skipped.
    """
    found = []
    for root, folders, files in os.walk(directory, followlinks=follow_links):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(root, name))
    return found


def _check_directory(directory):
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"`directory` must be a path to a folder of images, got "
            f"{directory!r}."
        )
    directory = os.fspath(directory)
    if not os.path.exists(directory):
        raise FileNotFoundError(
            f"`directory` {directory!r} does not exist."
        )
    if not os.path.isdir(directory):
        raise NotADirectoryError(
            f"`directory` {directory!r} is not a folder (pass the folder that "
            "holds the images)."
        )
    return directory


def _labels_from_folders(directory, paths):
    """Class index of each file: its top-level subfolder, sorted by name."""
    tops = []
    for path in paths:
        parts = os.path.relpath(path, directory).split(os.sep)
        if len(parts) < 2:
            raise ValueError(
                "`with_labels=True` takes the class of each image from its "
                f"top-level subfolder, but {path!r} lies directly in "
                f"{directory!r}. Put every image in a class subfolder "
                "(directory/class_name/...), or use with_labels=False."
            )
        tops.append(parts[0])
    class_names = sorted(set(tops))
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[t] for t in tops], dtype="int32"), class_names


def from_directory(
    directory,
    image_size,
    batch_size,
    *,
    color_mode="rgb",
    crop="center",
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

    PNG, JPEG, BMP and GIF files (first frame) are read; other files are
    ignored. Each image is converted to RGB or grayscale, cropped to the
    largest centered box with the aspect ratio of `image_size` (unless
    `crop=None`), and resized (bilinear, antialiased).

    Args:
        directory: path of the folder.
        image_size: int (square images) or `(height, width)`.
        batch_size: int, images per batch.
        color_mode: `"rgb"` (3 channels) or `"grayscale"` (1 channel).
        crop: `"center"` (keep the aspect ratio: crop the centered box, then
            resize) or None (resize the whole image, distorting it when its
            aspect ratio differs).
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
        of `(images, labels)` pairs, with `dataset.file_paths` (the files in
        the order they are read and cached: sorted, or in the seeded one-time
        shuffle when `shuffle` is on) and, with labels,
        `dataset.class_names`.

    Example:

    ```python
    dataset = keras_immiscible.data.from_directory(
        "my_photos/", image_size=64, batch_size=64, flip=True)
    model.fit(dataset, epochs=50)
    ```
    """
    directory = _check_directory(directory)
    size = pipeline.check_image_size(image_size, allow_pair=True)
    batch_size = pipeline.check_positive_int(batch_size, "batch_size")
    if color_mode not in COLOR_MODES:
        raise ValueError(
            f"`color_mode` must be one of {tuple(COLOR_MODES)}, got "
            f"{color_mode!r}."
        )
    if crop not in CROPS:
        raise ValueError(
            f"`crop` must be 'center' or None, got {crop!r}."
        )
    with_labels = pipeline.check_bool(with_labels, "with_labels")
    shuffle_buffer = pipeline.check_shuffle(shuffle)
    cache = pipeline.check_cache(cache)
    drop_remainder = pipeline.check_bool(drop_remainder, "drop_remainder")
    flip = pipeline.check_bool(flip, "flip")
    follow_links = pipeline.check_bool(follow_links, "follow_links")
    seed = pipeline.check_seed(seed)
    dtype = pipeline.check_dtype(dtype)
    tf = pipeline.import_tensorflow("`from_directory`")

    paths = list_image_files(directory, follow_links=follow_links)
    if not paths:
        raise ValueError(
            f"`directory` {directory!r} holds no image files (looked "
            f"recursively for {', '.join(IMAGE_EXTENSIONS)})."
        )
    if drop_remainder and len(paths) < batch_size:
        raise ValueError(
            f"`directory` holds {len(paths)} images, fewer than "
            f"batch_size={batch_size}: with drop_remainder=True every batch "
            "would be dropped. Lower `batch_size` or pass "
            "drop_remainder=False."
        )
    if shuffle_buffer:
        order = np.random.default_rng(seed).permutation(len(paths))
        paths = [paths[i] for i in order]
    channels = COLOR_MODES[color_mode]

    def load(path):
        raw = tf.io.read_file(path)
        image = tf.io.decode_image(
            raw, channels=channels, dtype=tf.uint8, expand_animations=False
        )
        box = None
        if crop == "center":
            shape = tf.shape(image)
            box = pipeline.center_crop_box(shape[0], shape[1], *size)
        return pipeline.crop_and_resize(image, box, size)

    files = tf.data.Dataset.from_tensor_slices(paths)
    if with_labels:
        labels, class_names = _labels_from_folders(directory, paths)
        dataset = tf.data.Dataset.zip(
            (files, tf.data.Dataset.from_tensor_slices(labels))
        ).map(
            lambda path, label: (load(path), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        dataset = files.map(load, num_parallel_calls=tf.data.AUTOTUNE)
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
        dataset.class_names = class_names
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
            "`images` must be uint8 (0-255) or float (0-1), got dtype "
            f"{images.dtype}."
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
):
    """Arrays of images (and labels) as a batched `tf.data.Dataset`.

    The arrays stay in memory; each batch is gathered from a shuffled index
    order, so shuffling needs no copy of the images.

    Args:
        images: array `(N, height, width, channels)`, uint8 in [0, 255] or
            float in [0, 1] (checked: no NaN, no value out of range).
        batch_size: int, images per batch.
        labels: None, or N int class labels; the dataset then yields
            `(images, labels)` with int32 labels.
        shuffle: True (a full reshuffle every epoch), False (array order),
            or an int shuffle-buffer size.
        drop_remainder: drop the last, smaller batch.
        flip: random horizontal flips (probability 1/2 per image and epoch).
        seed: int seed of the shuffles and flips.
        dtype: `"float32"` (images in [0, 1]) or `"uint8"` (float input is
            rounded to 0-255).

    Returns:
        A `tf.data.Dataset` of `(batch, height, width, channels)` images, or
        of `(images, labels)` pairs.

    Example:

    ```python
    images = keras_immiscible.data.load_digits()
    dataset = keras_immiscible.data.from_numpy(images, batch_size=128)
    ```
    """
    images = _check_images(images)
    count = images.shape[0]
    batch_size = pipeline.check_positive_int(batch_size, "batch_size")
    with_labels = labels is not None
    if with_labels:
        labels = _check_labels(labels, count)
    shuffle_buffer = pipeline.check_shuffle(shuffle, default_buffer=count)
    drop_remainder = pipeline.check_bool(drop_remainder, "drop_remainder")
    flip = pipeline.check_bool(flip, "flip")
    seed = pipeline.check_seed(seed)
    dtype = pipeline.check_dtype(dtype)
    if drop_remainder and count < batch_size:
        raise ValueError(
            f"`images` holds {count} images, fewer than batch_size="
            f"{batch_size}: with drop_remainder=True every batch would be "
            "dropped. Lower `batch_size` or pass drop_remainder=False."
        )
    tf = pipeline.import_tensorflow("`from_numpy`")

    image_tensor = tf.convert_to_tensor(images)
    label_tensor = tf.convert_to_tensor(labels) if with_labels else None
    indices = tf.data.Dataset.range(count)
    if shuffle_buffer:
        indices = indices.shuffle(
            min(shuffle_buffer, count), seed=seed, reshuffle_each_iteration=True
        )
    batches = indices.batch(batch_size, drop_remainder=drop_remainder)

    def gather(index):
        if with_labels:
            return (
                tf.gather(image_tensor, index),
                tf.gather(label_tensor, index),
            )
        return tf.gather(image_tensor, index)

    dataset = batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    return pipeline.finish_batches(
        dataset, flip=flip, seed=seed, dtype=dtype, with_labels=with_labels
    )
