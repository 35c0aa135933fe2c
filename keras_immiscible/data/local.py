"""Input pipelines for the user's own data: image folders and numpy arrays.

`from_directory` reads a folder of image files, `from_numpy` wraps arrays
already in memory. Both return batched `tf.data.Dataset`s of float32 images
in [0, 1] (or uint8) that `model.fit` takes on every Keras backend.
"""

import numbers
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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types -> channels: grey, RGB, palette, grey + alpha, RGBA.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
# JPEG start-of-frame markers (the frame header holds the component count).
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_header(path):
    """`(format, channels)` of an image file, read from its first bytes.

    `format` is `"png"`, `"jpeg"`, `"bmp"` or `"gif"`; `channels` is the
    channel count the file stores (1 grey, 2 grey + alpha, 3 RGB or
    palette, 4 RGBA or CMYK), or None when the header is damaged.

    Raises:
        ValueError: naming the file, when it is not a PNG, JPEG, BMP or GIF
            file (whatever its extension says) or cannot be read.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head.startswith(_PNG_SIGNATURE):
                if len(head) >= 26 and head[12:16] == b"IHDR":
                    return "png", _PNG_CHANNELS.get(head[25])
                return "png", None
            if head[:6] in (b"GIF87a", b"GIF89a"):
                return "gif", 3
            if head[:2] == b"BM":
                if len(head) < 30:
                    return "bmp", None
                bits = int.from_bytes(head[28:30], "little")
                return "bmp", 4 if bits == 32 else 3
            if head[:3] == b"\xff\xd8\xff":
                f.seek(2)
                return "jpeg", _jpeg_components(f)
    except OSError as e:
        raise ValueError(f"The image file {path!r} cannot be read: {e}") from e
    raise ValueError(
        f"{path!r} is not an image: it has an image extension, but it is not "
        f"a PNG, JPEG, BMP or GIF file (it starts with {head[:8]!r}). Remove "
        "it from the folder, or give it its real extension."
    )


def _jpeg_components(f):
    """The component count of the JPEG frame header, or None."""
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        kind = marker[1]
        while kind == 0xFF:  # fill bytes
            byte = f.read(1)
            if not byte:
                return None
            kind = byte[0]
        if kind in (0x01,) or 0xD0 <= kind <= 0xD8:
            continue  # markers without a payload
        if kind in (0xD9, 0xDA):
            return None  # end of image / scan before any frame header
        length = f.read(2)
        if len(length) < 2:
            return None
        if kind in _JPEG_SOF:
            frame = f.read(6)
            return frame[5] if len(frame) == 6 else None
        f.seek(int.from_bytes(length, "big") - 2, os.SEEK_CUR)


def check_image_files(paths):
    """The format of each image file; a clear error for files that cannot
    be used.

    Every file is opened and its header read (not decoded): a file that is
    not an image, or whose header is damaged, and an image with an alpha
    channel (grey + alpha, RGBA) or four colour channels (CMYK JPEG, 32-bit
    BMP) raise a `ValueError` that names the files. Those channels have no
    faithful RGB or grey reading (dropping an alpha channel keeps whatever
    colour the transparent pixels happen to store), so they are refused
    instead of converted.

    Returns:
        The list of formats (`"png"`, `"jpeg"`, `"bmp"`, `"gif"`).
    """
    formats, problems = [], []
    for path in paths:
        try:
            kind, channels = image_header(path)
        except ValueError as e:
            problems.append(str(e))
            formats.append(None)
            continue
        formats.append(kind)
        if channels is None:
            problems.append(
                f"{path!r} has a damaged {kind.upper()} header (a truncated "
                "or broken file)."
            )
        elif channels in (2, 4):
            what = {
                ("png", 2): "grey + alpha channels",
                ("png", 4): "an alpha channel (RGBA)",
                ("jpeg", 4): "four colour channels (CMYK)",
                ("bmp", 4): "32-bit pixels (an alpha channel)",
            }.get((kind, channels), f"{channels} channels")
            problems.append(
                f"{path!r} has {what}: images must have 1 (grey) or 3 (RGB) "
                "channels. Convert it first, e.g. with Pillow: "
                "Image.open(path).convert('RGB' or 'L').save(path)."
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

    The header of every file is read when the dataset is built (see
    `check_image_files`): a file named like an image that is not one, a
    damaged header, and an image with an alpha channel or four channels
    (RGBA, grey + alpha, CMYK) raise a `ValueError` naming the files, before
    any training. Grey images are read as RGB (three equal channels) and RGB
    images as grey (luma) as `color_mode` asks.

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
    # TensorFlow decodes BMP and GIF files to RGB only: read them as RGB and
    # convert, for grayscale.
    via_rgb = [
        channels == 1 and kind in ("bmp", "gif")
        for kind in check_image_files(paths)
    ]

    any_via_rgb = any(via_rgb)

    def decode(raw, via_rgb):
        def direct():
            return tf.io.decode_image(
                raw, channels=channels, dtype=tf.uint8, expand_animations=False
            )

        def grey_from_rgb():
            rgb = tf.io.decode_image(
                raw, channels=3, dtype=tf.uint8, expand_animations=False
            )
            return tf.image.rgb_to_grayscale(rgb)

        if not any_via_rgb:
            return direct()
        return tf.cond(via_rgb, grey_from_rgb, direct)

    def load(path, via_rgb):
        image = decode(tf.io.read_file(path), via_rgb)
        image.set_shape([None, None, channels])
        box = None
        if crop == "center":
            shape = tf.shape(image)
            box = pipeline.center_crop_box(shape[0], shape[1], *size)
        return pipeline.crop_and_resize(image, box, size)

    files = tf.data.Dataset.from_tensor_slices((paths, via_rgb))
    if with_labels:
        labels, class_names = _labels_from_folders(directory, paths)
        dataset = tf.data.Dataset.zip(
            (files, tf.data.Dataset.from_tensor_slices(labels))
        ).map(
            lambda file, label: (load(*file), label),
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


def _check_initial_epoch(initial_epoch):
    if (
        isinstance(initial_epoch, bool)
        or not isinstance(initial_epoch, numbers.Integral)
        or initial_epoch < 0
    ):
        raise ValueError(
            "`initial_epoch` must be a non-negative int (the epoch of the "
            f"first pass over the data), got {initial_epoch!r}."
        )
    return int(initial_epoch)


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
    batch_size = pipeline.check_positive_int(batch_size, "batch_size")
    with_labels = labels is not None
    if with_labels:
        labels = _check_labels(labels, count)
    shuffle = bool(pipeline.check_shuffle(shuffle, default_buffer=count))
    drop_remainder = pipeline.check_bool(drop_remainder, "drop_remainder")
    flip = pipeline.check_bool(flip, "flip")
    seed = pipeline.check_seed(seed)
    dtype = pipeline.check_dtype(dtype)
    initial_epoch = _check_initial_epoch(initial_epoch)
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
    num_batches = count // batch_size if drop_remainder else -(
        -count // batch_size
    )
    # The pass counter: the first batch of every pass increments it once,
    # so each pass (a peek by Keras included) knows its epoch.
    counter = tf.Variable(
        initial_epoch - 1, dtype=tf.int64, trainable=False,
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
        return tf.data.Dataset.zip(
            (batches, tf.data.Dataset.range(num_batches))
        ).map(lambda index, number: (index, key, number))

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
