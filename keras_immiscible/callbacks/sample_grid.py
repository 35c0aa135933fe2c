"""Save a grid of generated samples every few epochs."""

import importlib.util
import numbers
import os
import warnings

import keras
import numpy as np

from keras_immiscible.callbacks.ema import ema_weights
from keras_immiscible.metrics.evaluate import _takes_verbose
from keras_immiscible.utils.arguments import check_number
from keras_immiscible.utils.arguments import check_positive_int
from keras_immiscible.utils.images import make_image_grid
from keras_immiscible.utils.images import write_png

# Arguments of `model.generate` that have their own `SampleGrid` argument.
_OWN_ARGUMENTS = ("num_images", "steps", "seed", "labels", "guidance_scale")


def _check_labels(labels, num_images):
    """`labels` as a list of `num_images` ints >= 0 (None stays None)."""
    if labels is None:
        return None
    if isinstance(labels, (numbers.Integral, np.integer)) and not isinstance(
        labels, bool
    ):
        labels = [labels] * num_images
    try:
        array = np.asarray(keras.ops.convert_to_numpy(labels))
    except Exception as e:  # noqa: BLE001
        raise TypeError(
            f"`labels` must be None, an int or a sequence of ints, got {labels!r}."
        ) from e
    if (
        array.ndim != 1
        or array.dtype == bool
        or not np.issubdtype(array.dtype, np.integer)
        or (array.size and array.min() < 0)
    ):
        raise ValueError(
            "`labels` must be None, an int or a 1-D sequence of ints >= 0 "
            f"(one per image), got {labels!r}."
        )
    if len(array) != num_images:
        raise ValueError(
            f"`labels` must hold one label per image: {num_images} "
            f"(`num_images`), got {len(array)}."
        )
    return [int(v) for v in array]


def _check_guidance(guidance_scale, labels):
    guidance_scale = check_number(guidance_scale, "guidance_scale", allow_none=True)
    if guidance_scale is not None and labels is None:
        raise ValueError(
            "`guidance_scale` needs `labels`: classifier-free guidance mixes "
            "the predictions for the labels and for the null label."
        )
    return guidance_scale


class SampleGrid(keras.callbacks.Callback):
    """Writes a PNG grid of `model.generate(...)` samples every N epochs.

    At the end of every `every_n_epochs`-th epoch the callback calls
    `self.model.generate(num_images, steps=steps, seed=seed)` (with the
    optimizer's EMA weights loaded when it has `use_ema=True`, see
    `ema_weights`) and saves the tiled samples at
    `path_pattern.format(epoch=epoch + 1)` (1-based epoch, like
    `ModelCheckpoint`). The same `seed` every time shows how the same noise
    turns into images as training goes on.

    For a class-conditional model, `labels` picks the class of every image
    (e.g. `np.repeat(classes, 4)` with `num_rows=len(classes)`: one row per
    class) and `guidance_scale` the classifier-free guidance weight; both
    are passed to `generate` as `labels=` and `guidance_scale=` (and only
    when they are set, so models without labels work as before). Several
    callbacks with different `guidance_scale`s and path patterns give one
    series of grids per scale.

    The PNG is written by `keras.utils.save_img` (Pillow), atomically
    (`keras_immiscible.utils.images.write_png`).

    Args:
        path_pattern: file path with an optional `{epoch}` field, e.g.
            `"samples/epoch_{epoch:03d}.png"`. Missing directories are made.
        every_n_epochs: save after epochs N, 2N, ...
        num_images: images per grid.
        steps: sampling steps passed to `model.generate`.
        seed: sampling seed passed to `model.generate`.
        tensorboard_log_dir: if set, also write the grid as an image summary
            (tag `"samples"`, step = 0-based epoch, as in
            `keras.callbacks.TensorBoard`'s epoch scalars) with
            `tf.summary.image`. Needs TensorFlow and the `tensorboard`
            package (`pip install tensorflow-cpu tensorboard`; any Keras
            backend); without them, a warning is issued once and only the
            PNG is written. TensorFlow is imported only when this is set.
        num_rows: rows of the grid (default: as square as possible).
        scale: integer upscaling of every tile (e.g. 4 for 8x8 digits).
        padding: pixels between tiles.
        use_ema: load the EMA weights for sampling when the optimizer keeps
            them. Place this callback *before* `SwapEMAWeights` in the list,
            or pass `use_ema=False` if it comes after
            `SwapEMAWeights(swap_on_epoch=True)` (see `ema_weights`).
        generate_kwargs: extra keyword arguments for `model.generate` (not
            the ones above: `labels`, `guidance_scale`, `steps`, `seed`).
        labels: None (the model's unconditional `generate`), an int (every
            image of that class), or a sequence of `num_images` ints >= 0,
            passed to `model.generate(labels=...)`. The model checks them
            against its classes.
        guidance_scale: None (not passed: the model's default) or a number,
            passed to `model.generate(guidance_scale=...)`; needs `labels`.

    Attributes:
        last_images: the images of the most recent grid (numpy).
        last_path: the path of the most recent PNG.

    Example:

    ```python
    classes = [3, 7]
    callbacks = [
        keras_immiscible.callbacks.SampleGrid(
            f"samples/guidance_{scale:g}/epoch_{{epoch:03d}}.png",
            num_images=8, labels=np.repeat(classes, 4), num_rows=2,
            guidance_scale=scale, steps=20)
        for scale in (1.0, 3.0)
    ]
    model.fit(images, labels, epochs=10, callbacks=callbacks)
    ```
    """

    def __init__(
        self,
        path_pattern,
        every_n_epochs=1,
        num_images=16,
        steps=20,
        seed=0,
        tensorboard_log_dir=None,
        num_rows=None,
        scale=1,
        padding=1,
        use_ema=True,
        generate_kwargs=None,
        labels=None,
        guidance_scale=None,
    ):
        super().__init__()
        if not isinstance(path_pattern, (str, os.PathLike)):
            raise TypeError(
                "`path_pattern` must be a file path such as "
                f"'samples/epoch_{{epoch:03d}}.png', got {path_pattern!r}."
            )
        path_pattern = os.fspath(path_pattern)
        try:
            path_pattern.format(epoch=1)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                "`path_pattern` may only use the `{epoch}` field, got "
                f"{path_pattern!r} ({e})."
            ) from e
        every_n_epochs = check_positive_int(every_n_epochs, "every_n_epochs")
        num_images = check_positive_int(num_images, "num_images")
        generate_kwargs = dict(generate_kwargs or {})
        clashes = sorted(set(generate_kwargs) & set(_OWN_ARGUMENTS))
        if clashes:
            raise ValueError(
                f"`generate_kwargs` must not hold {clashes}: pass them as "
                "SampleGrid's own arguments."
            )
        self.path_pattern = path_pattern
        self.every_n_epochs = int(every_n_epochs)
        self.num_images = int(num_images)
        self.steps = steps
        self.seed = seed
        self.tensorboard_log_dir = tensorboard_log_dir
        self.num_rows = num_rows
        self.scale = scale
        self.padding = padding
        self.use_ema = use_ema
        self.generate_kwargs = generate_kwargs
        self.labels = _check_labels(labels, self.num_images)
        self.guidance_scale = _check_guidance(guidance_scale, self.labels)
        self.last_images = None
        self.last_path = None
        self._writer = None
        self._tensorboard_unavailable = False

    def get_config(self):
        """The constructor arguments (`SampleGrid(**config)` rebuilds it)."""
        return {
            "path_pattern": self.path_pattern,
            "every_n_epochs": self.every_n_epochs,
            "num_images": self.num_images,
            "steps": self.steps,
            "seed": self.seed,
            "tensorboard_log_dir": (
                None
                if self.tensorboard_log_dir is None
                else os.fspath(self.tensorboard_log_dir)
            ),
            "num_rows": self.num_rows,
            "scale": self.scale,
            "padding": self.padding,
            "use_ema": self.use_ema,
            "generate_kwargs": dict(self.generate_kwargs),
            "labels": None if self.labels is None else list(self.labels),
            "guidance_scale": self.guidance_scale,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def generate_arguments(self):
        """The keyword arguments of the callback's `model.generate` call
        (besides `num_images`)."""
        kwargs = dict(self.generate_kwargs)
        kwargs["steps"] = self.steps
        kwargs["seed"] = self.seed
        if self.labels is not None:
            kwargs["labels"] = np.asarray(self.labels, "int32")
        if self.guidance_scale is not None:
            kwargs["guidance_scale"] = self.guidance_scale
        return kwargs

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        with ema_weights(self.model, enabled=self.use_ema):
            kwargs = self.generate_arguments()
            if _takes_verbose(self.model.generate):
                kwargs.setdefault("verbose", 0)  # Keras' bar is showing.
            images = self.model.generate(self.num_images, **kwargs)
        images = np.asarray(keras.ops.convert_to_numpy(images))
        grid = make_image_grid(
            images, num_rows=self.num_rows, padding=self.padding, scale=self.scale
        )
        path = self.path_pattern.format(epoch=epoch + 1)
        write_png(path, grid)
        self.last_images = images
        self.last_path = path
        if self.tensorboard_log_dir is not None:
            self._log_to_tensorboard(grid, epoch)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # The one place where this module talks to TensorFlow (optional).
    def _log_to_tensorboard(self, grid, step):
        if self._tensorboard_unavailable:
            return
        missing = [
            package
            for package in ("tensorflow", "tensorboard")
            if importlib.util.find_spec(package) is None
        ]
        if missing:
            self._tensorboard_unavailable = True
            warnings.warn(
                f"SampleGrid: `tensorboard_log_dir` needs {' and '.join(missing)} "
                "(`pip install tensorflow-cpu tensorboard`) to write image "
                "summaries with `tf.summary.image`; writing PNG files only.",
                stacklevel=2,
            )
            return
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.fspath(self.tensorboard_log_dir)
            )
        with self._writer.as_default():
            tf.summary.image("samples", grid[None], step=step)
        self._writer.flush()
