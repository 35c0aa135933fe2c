"""Evaluate FID/KID of generated samples during `fit`."""

import numbers

import keras

from keras_immiscible.metrics.evaluate import add_real_images
from keras_immiscible.metrics.evaluate import per_image_labels
from keras_immiscible.metrics.evaluate import resolve_metrics
from keras_immiscible.metrics.evaluate import score_generated_images
from keras_immiscible.utils import arguments


class GenerativeEvaluation(keras.callbacks.Callback):
    """Computes FID/KID of generated images every N epochs, into `logs`.

    At the end of every `every_n_epochs`-th epoch the callback generates
    `num_images` images with `self.model.generate` (batch `i`:
    `generate(n, steps=steps, seed=seed + i)`; with the optimizer's EMA
    weights loaded when it has `use_ema=True`), extracts their features, and
    writes `"val_" + metric.name` (`val_fid`, `val_kid`) into the epoch's
    `logs`. The real images' features are extracted once, at the first
    evaluation, and reused.

    Order of callbacks: Keras calls `on_epoch_end` in list order and the
    others only see `logs` entries written before them, so put this callback
    *before* `ModelCheckpoint(monitor="val_fid")`, `EarlyStopping`,
    `CSVLogger` and `TensorBoard` in the `callbacks` list (`History` and the
    progress bar are added by Keras after the user's callbacks and always see
    them). Keras cannot infer whether `val_fid`/`val_kid` should go up or
    down, so pass `mode="min"` to `ModelCheckpoint`/`EarlyStopping` (lower
    is better for both). Also put it before `SwapEMAWeights`, or pass `use_ema=False` if
    it comes after `SwapEMAWeights(swap_on_epoch=True)` (see `ema_weights`).

    Epochs without evaluation (`every_n_epochs > 1`) get NaN for these keys
    (`skipped_value`), so that every epoch's `logs` have the same keys:
    `CSVLogger`, which fixes its columns at the first epoch, keeps the
    `val_*` columns (NaN on the skipped epochs), and
    `model.history.history["val_fid"]` has one entry per epoch. A NaN never
    counts as an improvement: `ModelCheckpoint(save_best_only=True)` skips
    those epochs, and the patience of `EarlyStopping` and
    `ReduceLROnPlateau` counts epochs, evaluated or not (so give them a
    patience of at least `every_n_epochs`). `skipped_value=None` leaves the
    keys out of those epochs' `logs` instead: the patience then counts
    evaluations, but `CSVLogger` loses the columns when the first epoch has
    none. `self.history` (`{epoch: {name: value}}`) holds the evaluations
    only.

    Args:
        real_images: real data: (N, H, W, C) array, `tf.data.Dataset` or
            iterable of batches (elements `x`, `(x, y)` or `{"images": x}`).
        metrics: names (`"fid"`, `"kid"`) and/or `FID`/`KID` objects.
        every_n_epochs: evaluate after epochs N, 2N, ...
        num_images: images generated per evaluation (the same `seed` every
            time, so evaluations differ only by the weights).
        steps: sampling steps passed to `model.generate`.
        seed: sampling seed.
        batch_size: images per `generate` call and per feature batch.
        num_real_images: use at most this many real images (`None`: all).
        feature_extractor, weights: extractor of the metrics built from
            names (`None`: Inception-V3; `"digits"`; a model or callable).
        use_ema: load the EMA weights while generating (see above).
        generate_kwargs: extra keyword arguments for `model.generate`, e.g.
            `labels`: one label, or one per generated image (`num_images`
            of them, sliced per batch: a class-conditional FID).
        skipped_value: what the epochs without evaluation log for each
            metric: NaN (the default), another float, or `None` to log
            nothing.
        verbose: 1 shows a `keras.utils.Progbar` while extracting real
            features and while generating, 0 is silent.
        **kid_kwargs: options of `KID` built from `"kid"` (`subset_size`,
            `num_subsets`, `max_samples`).

    Example:

    ```python
    callbacks = [
        GenerativeEvaluation(load_digits(split="test"), metrics=["kid"],
                             feature_extractor="digits", num_images=360),
        keras.callbacks.CSVLogger("log.csv"),
        keras.callbacks.ModelCheckpoint("best.keras", monitor="val_kid",
                                        mode="min", save_best_only=True),
    ]
    model.fit(images, epochs=10, callbacks=callbacks)
    ```
    """

    def __init__(
        self,
        real_images,
        metrics=("kid",),
        every_n_epochs=1,
        num_images=1000,
        steps=20,
        seed=0,
        batch_size=100,
        num_real_images=None,
        feature_extractor=None,
        weights="imagenet",
        use_ema=True,
        generate_kwargs=None,
        verbose=1,
        skipped_value=float("nan"),
        **kid_kwargs,
    ):
        super().__init__()
        for arg, value in (
            ("every_n_epochs", every_n_epochs),
            ("num_images", num_images),
            ("batch_size", batch_size),
        ):
            arguments.check_positive_int(value, arg)
        if skipped_value is not None:
            if isinstance(skipped_value, bool) or not isinstance(
                skipped_value, numbers.Real
            ):
                raise TypeError(
                    "`skipped_value` must be a float (NaN by default) or "
                    f"None, got {skipped_value!r}."
                )
            skipped_value = float(skipped_value)
        if real_images is None:
            raise TypeError("`real_images` must be given (an array or a dataset).")
        self.real_images = real_images
        self.metrics = resolve_metrics(
            metrics,
            feature_extractor=feature_extractor,
            weights=weights,
            batch_size=batch_size,
            **kid_kwargs,
        )
        self.every_n_epochs = int(every_n_epochs)
        self.num_images = int(num_images)
        self.steps = steps
        self.seed = seed
        self.batch_size = int(batch_size)
        self.num_real_images = num_real_images
        self.use_ema = use_ema
        self.generate_kwargs = dict(generate_kwargs or {})
        per_image_labels(self.generate_kwargs.get("labels"), self.num_images)
        self.verbose = verbose
        self.skipped_value = skipped_value
        self.history = {}
        self._real_done = False

    def on_train_begin(self, logs=None):
        # Real features are kept across `fit` calls on the same callback;
        # anything else fed to the metric objects beforehand is dropped.
        if not self._real_done:
            for metric in self.metrics:
                metric.reset_state()

    def evaluate(self):
        """Runs one evaluation now and returns `{metric.name: value}`."""
        if not self._real_done:
            for metric in self.metrics:
                metric.reset_state()
            add_real_images(
                self.metrics,
                self.real_images,
                self.batch_size,
                self.num_real_images,
                self.verbose,
            )
            self._real_done = True
        for metric in self.metrics:
            metric.reset_generated()
        return score_generated_images(
            self.metrics,
            self.model,
            self.num_images,
            self.batch_size,
            self.steps,
            self.seed,
            self.generate_kwargs,
            self.verbose,
            self.use_ema,
        )

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            # Same keys every epoch (CSVLogger fixes its columns at the
            # first one).
            if logs is not None and self.skipped_value is not None:
                for metric in self.metrics:
                    logs.setdefault("val_" + metric.name, self.skipped_value)
            return
        results = self.evaluate()
        self.history[epoch] = results
        if logs is not None:
            for name, value in results.items():
                logs["val_" + name] = value
