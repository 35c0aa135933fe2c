"""Checks of the data given to a diffusion model, with clear errors.

Static properties (dtype, shape) are checked when the training step is
traced, on every backend. Values (NaN/inf, range) are checked before they
reach the compiled step: up front for numpy arrays, and by a host-side stage
appended to `tf.data` pipelines, which raises as soon as a bad batch is read.
"""

import types
import warnings

import keras
import numpy as np

from keras_immiscible.backend import is_concrete as _is_concrete

_RANGE_TOLERANCE = 1e-3


def network_spec(network):
    """Returns `(image_shape, takes_labels)` of a denoiser network."""
    inputs = getattr(network, "inputs", None)
    if not inputs or len(inputs) not in (2, 3):
        raise ValueError(
            "`network` must be a functional keras.Model with inputs "
            "[noisy_images, noise_level] (+ labels), such as "
            "keras_immiscible.layers.UNet(...); got inputs "
            f"{getattr(network, 'inputs', None)}."
        )
    image_shape = tuple(inputs[0].shape[1:])
    if any(d is None for d in image_shape):
        raise ValueError(
            f"The network's image input needs a fully defined shape, got {image_shape}."
        )
    return image_shape, len(inputs) == 3


def label_limit(network):
    """How many label values a class-conditional network embeds, or None.

    The rows of the network's one `keras.layers.Embedding` (for
    `keras_immiscible.layers.UNet(num_classes=n)`: `n + 1`, the classes and
    the null label `n`). `None` when the network has no single embedding
    layer to read it from; labels are then only checked to be >= 0.
    """
    embeddings = [
        layer
        for layer in getattr(network, "layers", [])
        if isinstance(layer, keras.layers.Embedding)
    ]
    if len(embeddings) != 1:
        return None
    return int(embeddings[0].input_dim)


def check_label_values(labels, limit, name="labels"):
    """Raises a `ValueError` for labels < 0 or >= `limit` (if not None).

    Args:
        labels: a numpy array, or a concrete (eager) tensor.
        limit: the number of valid label values, or None.
        name: how the error names the labels.
    """
    if isinstance(labels, (np.ndarray, list, tuple)):
        labels = np.asarray(labels)
        if labels.size == 0:
            return
        if labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0):
            raise ValueError(
                f"`{name}` must be integer class indices, got non-integer "
                f"values such as {labels[np.mod(labels, 1) != 0].flat[0]!r}."
            )
        low, high = int(labels.min()), int(labels.max())
    else:
        # A device tensor: one boolean comes to the host, not the labels.
        if 0 in tuple(labels.shape):
            return
        bad = labels < 0
        if limit is not None:
            bad = keras.ops.logical_or(bad, labels >= limit)
        if not bool(keras.ops.convert_to_numpy(keras.ops.any(bad))):
            return
        low = int(keras.ops.convert_to_numpy(keras.ops.min(labels)))
        high = int(keras.ops.convert_to_numpy(keras.ops.max(labels)))
    if low < 0 or (limit is not None and high >= limit):
        valid = f"[0, {limit - 1}]" if limit is not None else ">= 0"
        raise ValueError(
            f"`{name}` must be class indices in {valid} (the rows of the "
            f"network's class embedding), got values in [{low}, {high}]."
        )


def check_labels_argument(model, y, name="y"):
    """Checks labels given to `fit`/`evaluate` as a numpy array (`y`)."""
    if isinstance(y, np.ndarray) and model.takes_labels:
        check_label_values(y, model.label_limit, name)


def _describe_shape(shape):
    return "(batch, " + ", ".join(str(d) for d in shape) + ")"


def _check_dtype(dtype, name):
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == "uint8" or "float" in dtype:
        return dtype
    raise TypeError(
        f"`{name}` must hold images as float in [0, 1] or uint8 in "
        f"[0, 255], got dtype {dtype}."
    )


def _check_shape(shape, image_shape, name):
    if tuple(shape[1:]) != tuple(image_shape) or len(shape) != len(image_shape) + 1:
        raise ValueError(
            f"`{name}` must have shape {_describe_shape(image_shape)} to "
            f"match the network, got {tuple(shape)}."
        )


def _accepted_shapes(model):
    """The batch shapes a model trains on: its images, and latents."""
    data_shape = tuple(getattr(model, "data_shape", model.image_shape))
    shapes = [data_shape]
    if tuple(model.image_shape) != data_shape:
        shapes.append(tuple(model.image_shape))  # latents, encoded upstream
    return shapes


def _check_batch_shape(shape, model, name):
    """Checks a batch of images (or, for latent models, of latents)."""
    shapes = _accepted_shapes(model)
    if len(shapes) == 1:
        return _check_shape(shape, shapes[0], name)
    if len(shape) < 1 or tuple(shape[1:]) not in shapes:
        raise ValueError(
            f"`{name}` must hold images of shape "
            f"{_describe_shape(shapes[0])} (the autoencoder's) or latents "
            f"of shape {_describe_shape(shapes[1])} (the network's), got "
            f"{tuple(shape)}."
        )


BATCH_KEYS = ("images", "labels", "noise", "assignment_gain", "sample_weight")


def _as_batch_dict(x, y):
    """Reads the batch forms the models accept into one dict."""
    if isinstance(x, dict):
        unknown = sorted(set(x) - set(BATCH_KEYS))
        if "images" not in x or unknown:
            raise ValueError(
                f"Dict batches must have the key 'images' and optionally "
                f"{BATCH_KEYS[1:]}, got keys {sorted(x)}."
            )
        batch = dict(x)
        if y is not None:
            batch.setdefault("labels", y)
        return batch
    if isinstance(x, (tuple, list)) and y is None:
        if len(x) != 2:
            raise ValueError(
                "Each batch must be `images`, `(images, labels)` or a dict "
                "with the key 'images', got a tuple of "
                f"{len(x)} elements."
            )
        x, y = x
    return {"images": x, "labels": y}


def check_batch(model, x, y):
    """Trace-time checks of one batch; returns it as a dict.

    The dict has the key `"images"` and, where present, `"labels"` (int32,
    flat), `"noise"` (float, shaped like the images) and
    `"assignment_gain"` (the upstream assignment's gain, positive when the
    noise is closer, as `keras_immiscible.assignment.assignment_gain`).
    """
    batch = _as_batch_dict(x, y)
    images = batch["images"]
    _check_dtype(images.dtype, "images")
    _check_batch_shape(tuple(images.shape), model, "images")
    if batch.get("noise") is not None:
        noise = batch["noise"]
        if "float" not in keras.backend.standardize_dtype(noise.dtype):
            raise TypeError(f"Batch 'noise' must be float, got dtype {noise.dtype}.")
        _check_shape(tuple(noise.shape), model.image_shape, "noise")
    labels = batch.get("labels")
    if model.takes_labels:
        if labels is None:
            raise ValueError(
                "The network is class-conditional: the data must be `(images, labels)`."
            )
        if _is_concrete(labels):
            # Eager steps (PyTorch, run_eagerly): checked here. Compiled
            # steps get labels checked upstream (numpy arrays in
            # `check_dataset`, tf.data by its checking stage).
            check_label_values(labels, model.label_limit, "labels")
        batch["labels"] = keras.ops.reshape(keras.ops.cast(labels, "int32"), (-1,))
    elif labels is not None:
        if not getattr(model, "_warned_labels", False):
            warnings.warn(
                "The data has labels but the network is unconditional; the "
                "labels are ignored. Build the network with `num_classes` to "
                "use them.",
                stacklevel=2,
            )
            model._warned_labels = True
        batch["labels"] = None
    return batch


def _check_values(images, name):
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return
    if not np.all(np.isfinite(images)):
        bad = int(images.size - np.count_nonzero(np.isfinite(images)))
        raise ValueError(
            f"`{name}` contains {bad} NaN or infinite value(s); training on "
            "them would give a NaN loss."
        )
    low, high = float(images.min()), float(images.max())
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(
            f"Float `{name}` must lie in [0, 1], got values in [{low:.4g}, "
            f"{high:.4g}]. Scale them (e.g. divide 0-255 data by 255) or pass "
            "uint8 images."
        )


def _check_finite_values(array, name):
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"`{name}` contains NaN or infinite value(s); training on them "
            "would give a NaN loss."
        )


def check_dataset(model, x, name="x"):
    """Checks what `fit`/`evaluate` receive; returns it (maybe wrapped)."""
    if x is None:
        return x
    array = x[0] if isinstance(x, (list, tuple)) and len(x) == 1 else x
    if isinstance(array, dict) and isinstance(array.get("images"), np.ndarray):
        array = array["images"]
    labels = None
    if isinstance(x, (list, tuple)) and len(x) == 2:
        labels = x[1]
    elif isinstance(x, dict):
        labels = x.get("labels")
    if isinstance(labels, np.ndarray) and model.takes_labels:
        check_label_values(labels, model.label_limit, "labels")
    if isinstance(array, np.ndarray):
        if array.dtype.kind not in "fu" or (
            array.dtype.kind == "u" and array.dtype != np.uint8
        ):
            raise TypeError(
                f"`{name}` must hold images as float in [0, 1] or uint8 in "
                f"[0, 255], got dtype {array.dtype}."
            )
        _check_batch_shape(array.shape, model, name)
        if tuple(array.shape[1:]) == _accepted_shapes(model)[0]:
            _check_values(array, name)  # images; latents have no range
        else:
            _check_finite_values(array, name)
        return x
    if is_tf_dataset(x):
        return _checked_tf_dataset(model, x, name)
    return x


def shuffles_itself(x):
    """Whether `fit` ignores `shuffle` for `x` (Keras then warns)."""
    if isinstance(x, types.GeneratorType) or is_tf_dataset(x):
        return True
    module = type(x).__module__ or ""
    return module.startswith("torch.utils.data") and (type(x).__name__ == "DataLoader")


def is_tf_dataset(x):
    try:
        import tensorflow as tf
    except ImportError:
        return False
    return isinstance(x, tf.data.Dataset)


def _checked_tf_dataset(model, dataset, name):
    import tensorflow as tf

    spec = dataset.element_spec
    image_spec = spec[0] if isinstance(spec, (tuple, list)) else spec
    if isinstance(image_spec, dict):
        image_spec = image_spec.get("images")
    if not hasattr(image_spec, "dtype"):
        raise ValueError(
            f"`{name}` must yield images, (images, labels) or dicts with the "
            f"key 'images', got elements {spec}."
        )
    _check_dtype(image_spec.dtype.name, name)
    shape = image_spec.shape
    if shape.rank is not None:
        known = tuple(shape[1:])
        shapes = _accepted_shapes(model)
        if not any(
            len(known) == len(expected)
            and all(d is None or d == e for d, e in zip(known, expected))
            for expected in shapes
        ):
            raise ValueError(
                f"`{name}` must yield batches of shape "
                f"{_describe_shape(shapes[0])} to match the "
                f"{'autoencoder' if len(shapes) > 1 else 'network'}, got "
                f"{tuple(shape)}. (Did you forget to .batch() it?)"
            )

    def check(*element):
        images = element[0]
        if isinstance(images, dict):
            images = images["images"]
        latents = len(_accepted_shapes(model)) > 1 and tuple(images.shape[1:]) == tuple(
            model.image_shape
        )
        if latents:
            tf.debugging.assert_all_finite(
                tf.cast(images, tf.float32),
                f"`{name}` contains NaN or infinite latents.",
            )
        elif images.dtype != tf.uint8:
            floats = tf.cast(images, tf.float32)
            tf.debugging.assert_all_finite(
                floats,
                f"`{name}` contains NaN or infinite values; training on them "
                "would give a NaN loss.",
            )
            tf.debugging.assert_greater_equal(
                tf.reduce_min(floats),
                -_RANGE_TOLERANCE,
                f"Float `{name}` must lie in [0, 1] (divide 0-255 data by 255 "
                "or pass uint8 images).",
            )
            tf.debugging.assert_less_equal(
                tf.reduce_max(floats),
                1.0 + _RANGE_TOLERANCE,
                f"Float `{name}` must lie in [0, 1] (divide 0-255 data by 255 "
                "or pass uint8 images).",
            )
        labels = None
        if isinstance(element[0], dict):
            labels = element[0].get("labels")
        elif len(element) > 1:
            labels = element[1]
        if labels is not None and model.takes_labels:
            labels = tf.cast(labels, tf.int64)
            message = (
                "labels must be class indices in "
                + (
                    f"[0, {model.label_limit - 1}]"
                    if model.label_limit is not None
                    else ">= 0"
                )
                + " (the rows of the network's class embedding)."
            )
            tf.debugging.assert_non_negative(labels, message)
            if model.label_limit is not None:
                tf.debugging.assert_less(
                    labels, tf.constant(model.label_limit, tf.int64), message
                )
        return element if len(element) > 1 else element[0]

    return dataset.map(check)
