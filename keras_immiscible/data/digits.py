"""scikit-learn's bundled 8x8 handwritten digits, as images.

The data ships inside scikit-learn (1,797 images of 8x8 pixels with 17 grey
levels), so it loads with no network. It is the library's default data set
for examples, tests and CPU-scale benchmarks.
"""

import numpy as np


def load_digits(split="all", dtype="float32", return_labels=False, seed=0):
    """Loads the bundled digits as (N, 8, 8, 1) images.

    Args:
        split: `"all"` (1,797 images), `"train"` (the first 80% of a fixed
            shuffle) or `"test"` (the remaining 20%).
        dtype: `"float32"` for values in [0, 1] or `"uint8"` for 0-255.
        return_labels: also return the int32 class labels (0-9).
        seed: seed of the fixed shuffle behind the train/test split.

    Returns:
        `images`, or `(images, labels)` with `return_labels=True`.

    Example:

    >>> images = load_digits()
    >>> images.shape, images.dtype
    ((1797, 8, 8, 1), dtype('float32'))
    """
    if split not in ("all", "train", "test"):
        raise ValueError(
            f"`split` must be 'all', 'train' or 'test', got {split!r}."
        )
    if dtype not in ("float32", "uint8"):
        raise ValueError(f"`dtype` must be 'float32' or 'uint8', got {dtype!r}.")
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
    images = images[..., None]
    if dtype == "uint8":
        images = np.round(images * 255.0).astype("uint8")
    return (images, labels) if return_labels else images
