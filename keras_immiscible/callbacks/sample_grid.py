"""Save a grid of generated samples every few epochs."""

import os
import warnings

import keras
import numpy as np

from keras_immiscible.callbacks.ema import ema_weights
from keras_immiscible.metrics.evaluate import _takes_verbose
from keras_immiscible.utils.images import encode_png
from keras_immiscible.utils.images import make_image_grid
from keras_immiscible.utils.images import write_png


class SampleGrid(keras.callbacks.Callback):
    """Writes a PNG grid of `model.generate(...)` samples every N epochs.

    At the end of every `every_n_epochs`-th epoch the callback calls
    `self.model.generate(num_images, steps=steps, seed=seed)` (with the
    optimizer's EMA weights loaded when it has `use_ema=True`, see
    `ema_weights`) and saves the tiled samples at
    `path_pattern.format(epoch=epoch + 1)` (1-based epoch, like
    `ModelCheckpoint`). The same `seed` every time shows how the same noise
    turns into images as training goes on.

    Args:
        path_pattern: file path with an optional `{epoch}` field, e.g.
            `"samples/epoch_{epoch:03d}.png"`. Missing directories are made.
        every_n_epochs: save after epochs N, 2N, ...
        num_images: images per grid.
        steps: sampling steps passed to `model.generate`.
        seed: sampling seed passed to `model.generate`.
        tensorboard_log_dir: if set, also write the grid as an image summary
            (tag `"samples"`, step = 0-based epoch, as in
            `keras.callbacks.TensorBoard`'s epoch scalars) with `tf.summary`
            (`tf.summary.image`, or the same image-plugin summary written
            with core TensorFlow when the `tensorboard` package is missing).
            Needs TensorFlow (any Keras backend); without it, a warning is
            issued once and only the PNG is written.
        num_rows: rows of the grid (default: as square as possible).
        scale: integer upscaling of every tile (e.g. 4 for 8x8 digits).
        padding: pixels between tiles.
        use_ema: load the EMA weights for sampling when the optimizer keeps
            them. Place this callback *before* `SwapEMAWeights` in the list,
            or pass `use_ema=False` if it comes after
            `SwapEMAWeights(swap_on_epoch=True)` (see `ema_weights`).
        generate_kwargs: extra keyword arguments for `model.generate`.

    Attributes:
        last_images: the images of the most recent grid (numpy).
        last_path: the path of the most recent PNG.
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
        for arg, value in (("every_n_epochs", every_n_epochs), ("num_images", num_images)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{arg}` must be an integer >= 1, got {value!r}.")
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
        self.generate_kwargs = dict(generate_kwargs or {})
        self.last_images = None
        self.last_path = None
        self._writer = None
        self._tensorboard_unavailable = False

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        with ema_weights(self.model, enabled=self.use_ema):
            kwargs = dict(self.generate_kwargs)
            if _takes_verbose(self.model.generate):
                kwargs.setdefault("verbose", 0)  # Keras' bar is showing.
            images = self.model.generate(
                self.num_images, steps=self.steps, seed=self.seed, **kwargs
            )
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
        try:
            import tensorflow as tf
        except ImportError:
            self._tensorboard_unavailable = True
            warnings.warn(
                "SampleGrid: `tensorboard_log_dir` needs TensorFlow "
                "(`pip install tensorflow-cpu`) to write image summaries; "
                "writing PNG files only.",
                stacklevel=2,
            )
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.fspath(self.tensorboard_log_dir)
            )
        with self._writer.as_default():
            try:
                tf.summary.image("samples", grid[None], step=step)
            except Exception as e:  # noqa: BLE001
                if type(e).__name__ != "TBNotInstalledError":
                    raise
                # `tf.summary.image` lives in the `tensorboard` package;
                # without it, write the same summary (the image plugin's
                # format: width, height, PNG bytes) with core TensorFlow.
                from tensorflow.core.framework import summary_pb2

                metadata = summary_pb2.SummaryMetadata()
                metadata.plugin_data.plugin_name = "images"
                height, width = grid.shape[:2]
                tensor = tf.constant([str(width).encode(), str(height).encode(), encode_png(grid)])
                tf.summary.write("samples", tensor, step=step, metadata=metadata)
        self._writer.flush()
