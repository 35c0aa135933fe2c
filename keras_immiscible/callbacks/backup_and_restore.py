"""`BackupAndRestore`: Keras' fault-tolerance callback, made exact.

`keras.callbacks.BackupAndRestore` (Keras 3) saves the weights and the
optimizer, and restarts an interrupted run at the beginning of the epoch it
was in. For a run killed in the middle of an epoch that is not the same run:

- the model's `SeedGenerator` states (the noise and the noise levels of
  every step) are not saved, so the restarted run draws the noise of its
  first steps again;
- a backup taken in the middle of an epoch (`save_freq=N`) records the
  batch, but the restart ignores it: the batches of the epoch that were
  already trained on are trained on again, with the weights that already
  saw them (more optimizer steps than the run would have made);
- the backup is written in place: a kill while it is written leaves a
  truncated file, and the run cannot restart;
- a non-finite state (a diverging loss) is backed up like any other, and
  then deleted with the backup directory when `fit` ends.

This subclass keeps Keras' signature and fixes the four: it also saves the
seed states and the metric states, resumes inside the epoch at the batch
after the backup (the batches already trained on are read from the data
and skipped, without a training step), writes each backup to new files and
commits it with one atomic rename of its small metadata file, and refuses
to back up a non-finite loss or variable (it raises, which stops `fit`
before any later callback runs, and keeps the last good backup).
"""

import glob
import json
import math
import os
import shutil
import warnings

import keras
import numpy as np

FORMAT = "keras_immiscible.BackupAndRestore/1"
METADATA = "training_metadata.json"
_PREFIX = "backup-"
_WEIGHTS = ".weights.h5"
_STATE = ".state.npz"


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Backs up the whole training state, and resumes an interrupted `fit`.

    A drop-in replacement for `keras.callbacks.BackupAndRestore` (same
    arguments) that makes a run killed at any point and restarted the same
    run as one that was never interrupted: with the same script and seeds,
    the final weights, optimizer state (step counter and EMA weights
    included), model seed state and metrics are those of the uninterrupted
    run (bit for bit on a deterministic backend).

    Each backup holds the model's and the optimizer's variables
    (`model.save_weights`), the states of the model's `SeedGenerator`s, the
    metric states, and the position: the epoch and how many of its batches
    were trained on. When `fit` starts and a backup exists, the backup is
    loaded and `fit` continues at that position: a backup taken in the
    middle of an epoch resumes in the middle of that epoch. The batches the
    backup has already trained on are still read from the data (so that
    the epoch continues with the batches that follow them) but skipped
    without a training step; callbacks see them in `on_train_batch_begin`
    and `on_train_batch_end`, with the logs of the backup.

    The data must give the restarted epoch the batches it had. With
    `keras_immiscible.data.from_numpy`, build the dataset with
    `initial_epoch=backup.initial_epoch` (see the example); a pipeline whose
    order depends on how many times it was iterated in this process
    (a `tf.data` shuffle with `reshuffle_each_iteration=True`) restarts at
    its first epoch's order instead, and the resumed run then differs from
    the uninterrupted one by the order of its data.

    A backup is written to new files, then committed by replacing the small
    metadata file atomically; the files of older backups are removed after
    that. A process killed while it writes a backup therefore leaves the
    previous backup complete and in use.

    The loss is checked at the end of every batch and every variable before
    every backup. A non-finite value raises `FloatingPointError`, which
    stops `fit` at once: nothing is written, the last good backup stays (it
    is not deleted at the end either), and callbacks after this one in the
    list do not run for that batch. So put it *before* `ModelCheckpoint` in
    the callbacks list.

    Args:
        backup_dir: path of the local folder of the backup. Use it for this
            callback only.
        save_freq: `"epoch"` (a backup at the end of every epoch) or an int
            N (a backup every N batches).
        double_checkpoint: also keep the previous backup; if the latest
            cannot be loaded (a damaged file), the previous is loaded.
        delete_checkpoint: delete the backup folder when `fit` completes.

    Example:

    ```python
    backup = keras_immiscible.callbacks.BackupAndRestore(
        "backup/", save_freq=200)
    dataset = keras_immiscible.data.from_numpy(
        images, 64, seed=0, initial_epoch=backup.initial_epoch)
    model.fit(dataset, epochs=100, callbacks=[backup])
    # Killed (SIGKILL, preemption, power loss)? Run the same script again:
    # it continues after the last backup as if nothing had happened.
    ```
    """

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        double_checkpoint=False,
        delete_checkpoint=True,
    ):
        if isinstance(save_freq, bool) or (
            isinstance(save_freq, int) and save_freq < 1
        ):
            raise ValueError(
                "`save_freq` must be 'epoch' or a positive int (batches "
                f"between backups), got {save_freq!r}."
            )
        if isinstance(backup_dir, os.PathLike):
            backup_dir = os.fspath(backup_dir)
        super().__init__(
            backup_dir,
            save_freq=save_freq,
            double_checkpoint=double_checkpoint,
            delete_checkpoint=delete_checkpoint,
        )
        if "://" in str(backup_dir):
            raise ValueError(
                "`backup_dir` must be a local folder (the backup is committed "
                f"with an atomic rename), got {backup_dir!r}."
            )
        self._metadata_path = os.path.join(backup_dir, METADATA)
        self._reset_position()

    def _reset_position(self):
        self._epoch = 0
        self._done_in_epoch = 0
        self._since_save = 0
        self._generation = 0
        self._skip_batches = 0
        self._skipping = False
        self._skip_logs = {}
        self._pending_metrics = None
        self._resumed_epoch = None
        self._original_train_function = None
        self._last_good = None

    # ------------------------------------------------------------ position

    @property
    def initial_epoch(self):
        """The epoch a `fit` started now would resume at (0: no backup).

        Read from the backup folder, for building a data pipeline that
        starts at that epoch (`from_numpy(..., initial_epoch=...)`).
        """
        metadata = self._read_metadata()
        if metadata is None:
            return 0
        return int(metadata["epoch"])

    @property
    def initial_step(self):
        """The optimizer step of the backup a `fit` started now would
        restore (0: no backup)."""
        metadata = self._read_metadata()
        if metadata is None or metadata.get("keras"):
            return 0
        return int(metadata["step"])

    def _read_metadata(self):
        if not os.path.exists(self._metadata_path):
            return None
        try:
            with open(self._metadata_path) as f:
                metadata = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"The backup metadata {self._metadata_path!r} cannot be read "
                f"({e}). Delete the folder {self.backup_dir!r} to start "
                "over."
            ) from e
        if metadata.get("format") != FORMAT:
            # Written by keras.callbacks.BackupAndRestore.
            return {"keras": True, "epoch": int(metadata.get("epoch", 0))}
        return metadata

    # ------------------------------------------------------------- restore

    def on_train_begin(self, logs=None):
        self._reset_position()
        metadata = self._read_metadata()
        if metadata is None:
            # No backup: a fresh run (also after a `fit` that raised).
            self._model._initial_epoch = None
            return
        if metadata.get("keras"):
            warnings.warn(
                f"{self.backup_dir!r} holds a backup of "
                "keras.callbacks.BackupAndRestore: restoring its weights and "
                f"resuming at the start of epoch {metadata['epoch']}, "
                "without the seed and metric states or the position inside "
                "the epoch.",
                stacklevel=2,
            )
            super().on_train_begin(logs)
            self._epoch = metadata["epoch"]
            return
        try:
            self._restore(metadata)
        except OSError as e:
            previous = metadata.get("previous")
            if not (self.double_checkpoint and previous):
                raise
            warnings.warn(
                f"The latest backup in {self.backup_dir!r} cannot be loaded "
                f"({e}); loading the previous one (epoch "
                f"{previous['epoch']}, step {previous['step']}).",
                stacklevel=2,
            )
            self._restore(previous)
            if previous["epoch"] != metadata["epoch"]:
                warnings.warn(
                    f"The previous backup resumes at epoch "
                    f"{previous['epoch']}, not {metadata['epoch']}: a data "
                    "pipeline built with initial_epoch="
                    f"{metadata['epoch']} is one epoch off.",
                    stacklevel=2,
                )

    def _restore(self, metadata):
        model = self.model
        if not model.built:
            # The models of this library need no input shape to build (on
            # TensorFlow, `fit` builds them only when it traces the step).
            try:
                model.build()
            except (TypeError, ValueError):
                pass
        if not model.built:
            raise ValueError(
                "To use BackupAndRestore, the model must be built before "
                f"`fit()`. {model} is not built."
            )
        written_by = metadata.get("model")
        if written_by and written_by != type(model).__name__:
            raise ValueError(
                f"The backup in {self.backup_dir!r} was written by a "
                f"{written_by}, but this model is a {type(model).__name__}: "
                "restart with the model of the interrupted run, or delete "
                "the folder to start over."
            )
        weights_path = os.path.join(self.backup_dir, metadata["weights"])
        state_path = os.path.join(self.backup_dir, metadata["state"])
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(weights_path)
            with np.load(state_path, allow_pickle=False) as stored:
                state = {key: stored[key] for key in stored.files}
        except Exception as e:
            raise OSError(
                f"Could not load the backup {weights_path!r} / {state_path!r}: {e}"
            ) from e
        extra, metrics = _extra_variables(model), model.metrics_variables
        names = [str(n) for n in state.get("extra_names", [])]
        # Matched by position, as `load_weights` does (the names of a
        # process's layers carry counters, e.g. "seed_generator_1").
        stored_shapes = [
            tuple(state[f"{kind}_{i}"].shape)
            for kind, count in (
                ("extra", len(names)),
                ("metric", len([k for k in state if k.startswith("metric_")])),
            )
            for i in range(count)
        ]
        shapes = [tuple(v.shape) for v in extra + list(metrics)]
        if stored_shapes != shapes:
            raise ValueError(
                f"The backup {state_path!r} was written by another model: "
                f"it holds the states {names} and "
                f"{len(stored_shapes) - len(names)} metric variables, the "
                f"model has {[v.path for v in extra]} and {len(metrics)}."
            )
        for i, variable in enumerate(extra):
            variable.assign(state[f"extra_{i}"])
        self._pending_metrics = [state[f"metric_{i}"] for i in range(len(metrics))]
        step = _as_int(model.optimizer.iterations) if model.optimizer else None
        if step is not None and step != metadata["step"]:
            raise ValueError(
                f"Restoring {weights_path!r} left the optimizer at step "
                f"{step}, but the backup was taken at step "
                f"{metadata['step']}: the optimizer was not restored. Is it "
                "the optimizer of the interrupted run (same class, learning "
                "rate schedule, `use_ema`, ...)? Keras warns above which "
                "variables it skipped."
            )
        self._epoch = self._resumed_epoch = int(metadata["epoch"])
        self._skip_batches = int(metadata["batches_done"])
        self._skip_logs = dict(metadata.get("logs") or {})
        self._generation = int(metadata["generation"])
        self._last_good = metadata
        model._initial_epoch = self._epoch
        if self._skip_batches:
            self._wrap_train_function(model)

    def _wrap_train_function(self, model):
        """Makes `fit`'s steps skippable: a skipped step reads its batches
        from the data and returns the backup's logs, without training."""
        original = model.train_function
        steps = max(1, int(getattr(model, "steps_per_execution", 1) or 1))

        def train_function(*args):
            if not self._skipping:
                return original(*args)
            # TensorFlow's and JAX's steps get an iterator and read their
            # batches from it; PyTorch's gets the batches.
            data = args[-1]
            if hasattr(data, "__next__"):
                for _ in range(steps):
                    next(data)
            logs = dict(self._skip_logs)
            if len(args) == 2:  # a stateless step (JAX): (state, data)
                return logs, args[0]
            return logs

        self._original_train_function = original
        model.train_function = train_function

    def _unwrap_train_function(self):
        if self._original_train_function is not None:
            self._model.train_function = self._original_train_function
            self._original_train_function = None

    # ------------------------------------------------------------ training

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._done_in_epoch = 0
        if self._pending_metrics is not None:
            if epoch == self._resumed_epoch and self._skip_batches:
                # After Keras' reset_metrics: the epoch's means so far.
                for variable, value in zip(
                    self.model.metrics_variables, self._pending_metrics
                ):
                    variable.assign(value)
            self._pending_metrics = None

    def on_train_batch_begin(self, batch, logs=None):
        self._skipping = (
            self._skip_batches > 0
            and self._epoch == self._resumed_epoch
            and batch < self._skip_batches
        )

    def on_train_batch_end(self, batch, logs=None):
        if self._skipping:
            self._skipping = False
            self._done_in_epoch = batch + 1
            if batch + 1 >= self._skip_batches:
                self._skip_batches = 0
                self._unwrap_train_function()
            return
        self._check_loss(logs, batch)
        self._since_save += batch + 1 - self._done_in_epoch
        self._done_in_epoch = batch + 1
        if self.save_freq != "epoch" and self._since_save >= self.save_freq:
            self._save(self._epoch, batch + 1, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._check_loss(logs, None)
        if self.save_freq == "epoch":
            self._save(epoch + 1, 0, logs)

    def on_train_end(self, logs=None):
        self._unwrap_train_function()
        # Keras never resets it: a later `fit` would skip epochs too.
        self._model._initial_epoch = None
        if self.delete_checkpoint and os.path.exists(self.backup_dir):
            shutil.rmtree(self.backup_dir)

    # -------------------------------------------------------------- checks

    def _where(self, batch):
        where = f"epoch {self._epoch}"
        if batch is not None:
            where += f", batch {batch}"
        step = _as_int(self.model.optimizer.iterations)
        return where + f" (optimizer step {step})"

    def _kept(self):
        if self._last_good is None:
            return f"No backup was written to {self.backup_dir!r} yet."
        good = self._last_good
        return (
            f"The last good backup in {self.backup_dir!r} (epoch "
            f"{good['epoch']}, {good['batches_done']} batches into it, "
            f"optimizer step {good['step']}) is kept as it was."
        )

    def _check_loss(self, logs, batch):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(np.asarray(keras.ops.convert_to_numpy(loss)))
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"The training loss is {loss} at {self._where(batch)}: "
                f"training stopped. {self._kept()} A diverging loss often "
                "means a learning rate too high for the model."
            )

    def _check_variables(self, model, batch):
        for variable in _all_variables(model):
            value = keras.ops.convert_to_numpy(variable)
            if np.issubdtype(value.dtype, np.floating) or value.dtype.kind == "V":
                value = np.asarray(value, dtype="float32")
                if not np.all(np.isfinite(value)):
                    raise FloatingPointError(
                        f"The variable {variable.path!r} holds "
                        f"{int(value.size - np.isfinite(value).sum())} "
                        f"non-finite value(s) at {self._where(batch)}: "
                        "training stopped, and no backup of this state was "
                        f"written. {self._kept()}"
                    )

    # --------------------------------------------------------------- write

    def _save(self, epoch, batches_done, logs):
        model = self.model
        self._check_variables(model, batches_done - 1 if batches_done else None)
        os.makedirs(self.backup_dir, exist_ok=True)
        generation = self._generation + 1
        stem = os.path.join(self.backup_dir, f"{_PREFIX}{generation:08d}")
        model.save_weights(stem + _WEIGHTS, overwrite=True)
        _fsync(stem + _WEIGHTS)
        extra = _extra_variables(model)
        state = {"extra_names": np.array([v.path for v in extra])}
        for i, variable in enumerate(extra):
            state[f"extra_{i}"] = keras.ops.convert_to_numpy(variable)
        for i, variable in enumerate(model.metrics_variables):
            state[f"metric_{i}"] = keras.ops.convert_to_numpy(variable)
        with open(stem + _STATE, "wb") as f:
            np.savez(f, **state)
            f.flush()
            os.fsync(f.fileno())
        metadata = {
            "format": FORMAT,
            "epoch": int(epoch),
            "batches_done": int(batches_done),
            # Keras' key: the last batch seen, for people reading the file.
            "batch": int(batches_done) - 1 if batches_done else 0,
            "step": _as_int(model.optimizer.iterations),
            "model": type(model).__name__,
            "generation": generation,
            "weights": os.path.basename(stem + _WEIGHTS),
            "state": os.path.basename(stem + _STATE),
            "logs": _float_logs(logs),
            "previous": None,
        }
        if self.double_checkpoint and self._last_good is not None:
            metadata["previous"] = dict(self._last_good, previous=None)
        _write_atomically(self._metadata_path, json.dumps(metadata, indent=1))
        self._generation = generation
        self._since_save = 0
        self._last_good = metadata
        keep = {metadata["weights"], metadata["state"]}
        if metadata["previous"]:
            keep |= {metadata["previous"]["weights"], metadata["previous"]["state"]}
        for path in glob.glob(os.path.join(self.backup_dir, _PREFIX + "*")):
            if os.path.basename(path) not in keep:
                os.remove(path)


# ------------------------------------------------------------------ helpers


def _extra_variables(model):
    """The model's variables that `save_weights` leaves out: the states of
    its `SeedGenerator`s (and anything else not among its weights)."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _all_variables(model):
    variables = list(model.variables)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    return variables


def _as_int(value):
    return int(np.asarray(keras.ops.convert_to_numpy(value)))


def _float_logs(logs):
    out = {}
    for key, value in (logs or {}).items():
        try:
            out[key] = float(np.asarray(keras.ops.convert_to_numpy(value)))
        except (TypeError, ValueError):
            continue
    return out


def _fsync(path):
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _write_atomically(path, text):
    """Writes `text` to `path` so that `path` is the old or the new file,
    never a part of one: a temporary file, fsync, then `os.replace`."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
