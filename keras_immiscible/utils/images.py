"""Image grids and PNG files.

`make_image_grid` tiles a batch of NHWC images into one uint8 image;
`save_image_grid` writes that grid as a PNG file, atomically. The PNG files
are encoded by `keras.utils.save_img`, which needs Pillow
(`pip install pillow`).
"""

import math
import os

import keras
import numpy as np

from keras_immiscible.utils import arguments


def to_uint8_images(images, name="images"):
    """Converts NHWC images (float in [0, 1] or uint8 0-255) to uint8.

    Float images are clipped to [0, 1], scaled by 255 and rounded. Integer
    images must be uint8 (other integer types are ambiguous and rejected).
    """
    images = _as_numpy(images, name)
    if images.ndim != 4:
        raise ValueError(
            f"`{name}` must have rank 4 (batch, height, width, channels), "
            f"got shape {images.shape}."
        )
    if images.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"`{name}` must have 1 (grey), 3 (RGB) or 4 (RGBA) channels in "
            f"the last axis, got shape {images.shape}."
        )
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        if not np.all(np.isfinite(images)):
            raise ValueError(f"`{name}` contains NaN or infinite values.")
        return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise TypeError(
        f"`{name}` must be float images in [0, 1] or uint8 images in 0-255, "
        f"got dtype {images.dtype}."
    )


def make_image_grid(images, num_rows=None, padding=1, pad_value=0, scale=1):
    """Tiles a batch of images into one uint8 image of shape (H, W, C).

    Args:
        images: (N, h, w, C) float images in [0, 1] or uint8 images, C in
            {1, 3, 4}.
        num_rows: rows of the grid; by default `ceil(N / ceil(sqrt(N)))`
            (a square grid for square N). Columns: `ceil(N / num_rows)`.
        padding: pixels of `pad_value` between tiles and around the grid.
        pad_value: uint8 value of the padding pixels.
        scale: integer nearest-neighbour upscaling of every tile (useful for
            8x8 digits).

    Returns:
        A uint8 array of shape
        `(rows * h * scale + (rows + 1) * padding,
          cols * w * scale + (cols + 1) * padding, C)`.
    """
    images = to_uint8_images(images)
    n, h, w, c = images.shape
    if n == 0:
        raise ValueError("`images` must hold at least one image, got none.")
    scale = arguments.check_positive_int(scale, "scale")
    padding = arguments.check_int(padding, "padding", minimum=0)
    if num_rows is None:
        num_cols = int(math.ceil(math.sqrt(n)))
        num_rows = int(math.ceil(n / num_cols))
    else:
        num_rows = arguments.check_positive_int(num_rows, "num_rows")
        num_cols = int(math.ceil(n / num_rows))
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    grid = np.full(
        (
            num_rows * h + (num_rows + 1) * padding,
            num_cols * w + (num_cols + 1) * padding,
            c,
        ),
        pad_value,
        dtype=np.uint8,
    )
    for i in range(n):
        row, col = divmod(i, num_cols)
        top = padding + row * (h + padding)
        left = padding + col * (w + padding)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def write_png(path, image):
    """Writes one (H, W, C) uint8 image (C in {1, 3, 4}) as a PNG file.

    The file appears complete or not at all: `keras.utils.save_img` writes
    the PNG to a temporary file in the same folder, which is flushed to disk
    and then `os.replace`d over `path` (atomic on POSIX and Windows). A
    process killed mid-write leaves the old file (or none), never a
    truncated `path`. Missing folders are made.

    Args:
        path: the file to write.
        image: (H, W, C) or (H, W) uint8 array.

    Returns:
        `path`.
    """
    image = _check_png_image(image)
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            keras.utils.save_img(
                f,
                image,
                data_format="channels_last",
                file_format="png",
                scale=False,
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def _check_png_image(image):
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            "`image` must have shape (height, width, channels) with 1, 3 or "
            f"4 channels, got {image.shape}."
        )
    if image.dtype != np.uint8:
        raise TypeError(f"`image` must be uint8, got dtype {image.dtype}.")
    return image


def save_image_grid(images, path, num_rows=None, padding=1, pad_value=0, scale=1):
    """Tiles `images` with `make_image_grid` and writes the grid as a PNG.

    Returns the uint8 grid that was written.
    """
    grid = make_image_grid(
        images,
        num_rows=num_rows,
        padding=padding,
        pad_value=pad_value,
        scale=scale,
    )
    write_png(path, grid)
    return grid


def _as_numpy(x, name):
    if x is None or isinstance(x, (str, bytes)):
        raise TypeError(f"`{name}` must be an array of images, got {x!r}.")
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(keras.ops.convert_to_numpy(x))
    except Exception:  # noqa: BLE001 - fall back to numpy's conversion
        return np.asarray(x)
