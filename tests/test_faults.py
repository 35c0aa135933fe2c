"""Fault tests: a run killed mid-epoch and restarted, a diverging loss, and
damaged inputs.

- Kill and resume: a small training script runs in a subprocess on the
  current backend, kills itself with SIGKILL in the middle of an epoch (from
  a callback, at a chosen step: a real SIGKILL at a reproducible point), is
  restarted, and its final state (every variable of the model and of the
  optimizer: weights, noise moments, seed state, step counter, moments and
  EMA weights) is compared with that of an uninterrupted run. With
  `keras.callbacks.BackupAndRestore` the two differ (no seed state in the
  backup; the epoch restarts at its first batch on mid-epoch weights; see
  `keras_immiscible/callbacks/backup_and_restore.py`); with
  `keras_immiscible.callbacks.BackupAndRestore` they are bit for bit equal on
  the CPU backends.
- NaN: a learning rate that jumps to 1e30 mid-run makes the loss and the
  weights non-finite; `fit` stops with a `FloatingPointError` naming the
  step, and the last good backup and `ModelCheckpoint` file are untouched.
- Damaged inputs: a truncated `.keras` file, a file named like an image that
  is not one, images with an alpha or CMYK channel; and the library's own
  file writers never leave a half-written file.
"""

import glob
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_immiscible as ki

BACKEND = keras.backend.backend()

# 64 digits in batches of 16: 4 steps per epoch, 3 epochs (12 steps). A
# backup every 3 steps (steps 3, 6, 9, 12); the first run kills itself
# after step 7 (epoch 1, batch 2), one step after the backup of step 6
# (epoch 1, batch 1): the restart must resume inside epoch 1.
STEPS_PER_EPOCH, EPOCHS, SAVE_FREQ, KILL_AT = 4, 3, 3, 7

TRAIN_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys

    import keras
    import numpy as np

    import keras_immiscible as ki

    out, backup_dir, kill_at, callback = sys.argv[1:5]
    kill_at = int(kill_at)
    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(1)
    keras.utils.set_random_seed(0)
    network = ki.layers.UNet(
        (8, 8, 1), widths=(8,), block_depth=1, embedding_dims=8
    )
    model = ki.ImmiscibleFlowMatching(network, assignment="linear", seed=1)
    model.compile(
        optimizer=keras.optimizers.AdamW(
            1e-3, use_ema=True, ema_momentum=0.9
        )
    )
    if callback == "ki":
        backup = ki.callbacks.BackupAndRestore(backup_dir, save_freq=3)
        initial_epoch = backup.initial_epoch
    else:
        # Keras' callback needs a built model, even for a fresh run (on
        # TensorFlow `fit` builds it only when it traces the step).
        model.build()
        backup = keras.callbacks.BackupAndRestore(backup_dir, save_freq=3)
        initial_epoch = 0
    data = ki.data.from_numpy(
        ki.data.load_digits()[:64], 16, seed=0, initial_epoch=initial_epoch
    )

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    model.fit(data, epochs=3, callbacks=[backup, Kill()], verbose=0)
    state = {}
    for i, v in enumerate(model.variables):
        state[f"model/{i}/{v.path}"] = keras.ops.convert_to_numpy(v)
    for i, v in enumerate(model.optimizer.variables):
        state[f"optimizer/{i}/{v.path}"] = keras.ops.convert_to_numpy(v)
    np.savez(out, **state)
    """
)


def _run_script(script, *args, expect_kill=False):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, script, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if expect_kill:
        assert result.returncode == -9, (result.returncode, result.stderr[-3000:])
    else:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _differences(reference, resumed):
    """Max abs difference per group of variables (model weights, noise
    moments, seed state, optimizer step, optimizer moments, EMA weights)."""
    assert sorted(reference) == sorted(resumed)
    groups = {}
    for key in reference:
        a = reference[key].astype("float64")
        b = resumed[key].astype("float64")
        if "seed_generator_state" in key:
            group = "seed state"
        elif "noise_" in key:
            group = "noise moments"
        elif key.startswith("model/"):
            group = "weights"
        elif key.endswith("iteration") or key.endswith("iterations"):
            group = "optimizer step"
        elif "average" in key:
            group = "EMA weights"
        else:
            group = "optimizer moments"
        difference = float(np.max(np.abs(a - b))) if a.size else 0.0
        groups[group] = max(groups.get(group, 0.0), difference)
    return groups


@pytest.fixture(scope="module")
def train_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "train.py"
    path.write_text(TRAIN_SCRIPT)
    return path


@pytest.mark.slow
def test_kill_mid_epoch_and_resume_is_the_uninterrupted_run(train_script, tmp_path):
    reference_file = tmp_path / "reference.npz"
    _run_script(train_script, reference_file, tmp_path / "unused", -1, "ki")
    backup = tmp_path / "backup"
    resumed_file = tmp_path / "resumed.npz"
    _run_script(train_script, resumed_file, backup, KILL_AT, "ki", expect_kill=True)
    # Killed after step 7: the backup is the one of step 6, inside epoch 1.
    metadata = json.loads((backup / "training_metadata.json").read_text())
    assert (metadata["epoch"], metadata["batches_done"], metadata["step"]) == (
        1,
        2,
        6,
    )
    assert not os.path.exists(resumed_file)
    _run_script(train_script, resumed_file, backup, -1, "ki")
    assert not os.path.exists(backup)  # deleted once `fit` completed

    reference, resumed = np.load(reference_file), np.load(resumed_file)
    differences = _differences(reference, resumed)
    print(f"{BACKEND}: max abs difference, resumed vs uninterrupted:", differences)
    assert set(differences) == {
        "weights",
        "noise moments",
        "seed state",
        "optimizer step",
        "optimizer moments",
        "EMA weights",
    }
    # The CPU backends are deterministic: bit for bit.
    assert all(d == 0.0 for d in differences.values()), differences
    step = [k for k in reference if k.endswith("iteration") or k.endswith("iterations")]
    assert int(resumed[step[0]]) == EPOCHS * STEPS_PER_EPOCH


# ------------------------------------------------------------ in-process


def _model(learning_rate=1e-3, family=ki.ImmiscibleFlowMatching):
    keras.utils.set_random_seed(0)
    network = ki.layers.UNet((8, 8, 1), widths=(8,), block_depth=1, embedding_dims=8)
    model = family(network, assignment="knn", seed=1)
    # Eager steps: the callback does not care, and tracing and compiling
    # would take most of these tests' time. (The subprocess test above runs
    # compiled steps.)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, use_ema=True, ema_momentum=0.9),
        run_eagerly=True,
    )
    return model


def _digits(initial_epoch=0):
    return ki.data.from_numpy(
        ki.data.load_digits()[:64], 16, seed=0, initial_epoch=initial_epoch
    )


def _jump(step, value):
    """A learning rate of 1e-3 up to optimizer step `step`, then `value`."""
    return keras.optimizers.schedules.PiecewiseConstantDecay([step], [1e-3, value])


class _StepTo(keras.optimizers.schedules.LearningRateSchedule):
    """1e-3 up to optimizer step `step`, then `value` (picked with `where`:
    an `inf` never meets a 0)."""

    def __init__(self, step, value):
        self.step, self.value = step, value

    def __call__(self, step):
        return keras.ops.where(
            keras.ops.less(step, self.step),
            keras.ops.convert_to_tensor(1e-3, "float32"),
            keras.ops.convert_to_tensor(self.value, "float32"),
        )

    def get_config(self):
        return {"step": self.step, "value": self.value}


def _all_finite(model):
    return all(
        np.all(np.isfinite(keras.ops.convert_to_numpy(v))) for v in model.weights
    )


def test_from_numpy_epoch_order_is_a_function_of_seed_and_epoch():
    """The resumed epoch's batches: pass n of a dataset built with
    `initial_epoch=e` is pass e + n of one built with `initial_epoch=0`,
    whatever else iterated either dataset before."""

    def passes(dataset, count):
        return [np.stack(list(dataset.as_numpy_iterator())) for _ in range(count)]

    from_start = passes(_digits(), 4)
    resumed = passes(_digits(initial_epoch=2), 2)
    np.testing.assert_array_equal(resumed[0], from_start[2])
    np.testing.assert_array_equal(resumed[1], from_start[3])
    assert not np.array_equal(from_start[0], from_start[1])  # reshuffled
    with pytest.raises(ValueError, match="initial_epoch"):
        ki.data.from_numpy(np.zeros((4, 2, 2, 1)), 2, initial_epoch=-1)


def test_nan_loss_stops_fit_and_keeps_the_last_good_backup(tmp_path):
    """A learning rate that jumps to 1e30 after step 5 makes the loss
    non-finite a few steps later: `fit` raises at that batch, naming the
    step, before `ModelCheckpoint` (after it in the list) can write, and the
    backup of the last good state is neither overwritten nor deleted."""
    model = _model(_jump(5, 1e30))
    backup_dir = tmp_path / "backup"
    checkpoint = tmp_path / "last.keras"
    callbacks = [
        ki.callbacks.BackupAndRestore(backup_dir, save_freq=2),
        keras.callbacks.ModelCheckpoint(checkpoint, save_freq=2),
    ]
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf).*step"):
        model.fit(_digits(), epochs=5, callbacks=callbacks, verbose=0)
    metadata = json.loads((backup_dir / "training_metadata.json").read_text())
    failed_at = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    assert 6 <= metadata["step"] < failed_at
    # The backup (and the checkpoint) hold the last good, finite state.
    restored = _model(_jump(5, 1e30))
    restored.build()
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(backup_dir / metadata["weights"])
    assert _all_finite(restored)
    assert (
        int(keras.ops.convert_to_numpy(restored.optimizer.iterations))
        == (metadata["step"])
    )
    assert _all_finite(keras.saving.load_model(checkpoint))
    assert sorted(os.listdir(backup_dir)) == sorted(
        [metadata["weights"], metadata["state"], "training_metadata.json"]
    )


def test_nan_weights_are_never_backed_up(tmp_path):
    """A learning rate of inf from step 6 on makes the weights non-finite in
    one step, while that step's loss (computed before the update) is still
    finite: the backup that would hold that state is refused."""
    model = _model(_StepTo(6, float("inf")))
    backup_dir = tmp_path / "backup"
    callback = ki.callbacks.BackupAndRestore(backup_dir, save_freq=1)
    with pytest.raises(FloatingPointError, match="non-finite value.*step 7"):
        model.fit(_digits(), epochs=3, callbacks=[callback], verbose=0)
    metadata = json.loads((backup_dir / "training_metadata.json").read_text())
    assert metadata["step"] == 6
    assert metadata["logs"]["loss"] > 0


def test_keras_terminate_on_nan_alone_lets_a_nan_backup_through(tmp_path):
    """Why the library's callback checks: with Keras' `TerminateOnNaN`
    first in the list, Keras' `BackupAndRestore(save_freq="epoch")` still
    backs up at the end of the interrupted epoch, and then deletes its
    folder when `fit` ends: the last good backup is gone."""
    model = _model(_jump(5, 1e30))
    model.build()  # Keras' callback needs a built model (TensorFlow)
    backup_dir = tmp_path / "backup"
    written = []

    class Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            written.append(float(logs["loss"]))

    model.fit(
        _digits(),
        epochs=5,
        callbacks=[
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.BackupAndRestore(backup_dir),
            Watch(),
        ],
        verbose=0,
    )
    assert not np.isfinite(written[-1])  # the epoch that ended on NaN...
    assert not os.path.exists(backup_dir)  # ...and no backup left at all


def test_interrupted_backup_write_keeps_the_previous_backup(tmp_path, monkeypatch):
    """A backup is committed by the atomic rename of its metadata: a write
    that dies half-way (here: the state file of the second backup raises)
    leaves the first backup in use, and the restarted run resumes from it
    (inside epoch 0) and cleans the stray files up."""
    backup_dir = tmp_path / "backup"
    from keras_immiscible.callbacks import backup_and_restore

    real_savez, calls = np.savez, []

    def dying_savez(file, **arrays):
        calls.append(1)
        if len(calls) == 2:
            file.write(b"half a file")
            raise KeyboardInterrupt("killed while writing the backup")
        return real_savez(file, **arrays)

    monkeypatch.setattr(backup_and_restore.np, "savez", dying_savez)
    callback = ki.callbacks.BackupAndRestore(backup_dir, save_freq=1)
    with pytest.raises(KeyboardInterrupt):
        _model().fit(_digits(), epochs=1, callbacks=[callback], verbose=0)
    monkeypatch.setattr(backup_and_restore.np, "savez", real_savez)
    metadata = json.loads((backup_dir / "training_metadata.json").read_text())
    assert (metadata["step"], metadata["batches_done"]) == (1, 1)
    assert len(glob.glob(str(backup_dir / "backup-*"))) == 4  # + 2 strays

    callback = ki.callbacks.BackupAndRestore(
        backup_dir, save_freq=1, delete_checkpoint=False
    )
    assert (callback.initial_epoch, callback.initial_step) == (0, 1)
    model = _model()
    history = model.fit(_digits(), epochs=1, callbacks=[callback], verbose=0)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 4
    assert np.isfinite(history.history["loss"][0])
    metadata = json.loads((backup_dir / "training_metadata.json").read_text())
    assert sorted(os.listdir(backup_dir)) == sorted(
        [metadata["weights"], metadata["state"], "training_metadata.json"]
    )


def test_damaged_backup_errors_or_falls_back_to_the_previous(tmp_path):
    backup_dir = tmp_path / "backup"
    callback = ki.callbacks.BackupAndRestore(
        backup_dir,
        save_freq=2,
        double_checkpoint=True,
        delete_checkpoint=False,
    )
    _model().fit(_digits(), epochs=1, callbacks=[callback], verbose=0)
    metadata = json.loads((backup_dir / "training_metadata.json").read_text())
    assert metadata["step"] == 4 and metadata["previous"]["step"] == 2
    latest = backup_dir / metadata["weights"]
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated

    # With the previous backup: a warning, and training resumes from it.
    model = _model()
    callback = ki.callbacks.BackupAndRestore(
        backup_dir,
        save_freq=2,
        double_checkpoint=True,
        delete_checkpoint=False,
    )
    with pytest.warns(UserWarning, match="loading the previous one"):
        model.fit(_digits(), epochs=1, callbacks=[callback], verbose=0)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 4

    # Without it: an error naming the damaged file.
    metadata = json.loads((backup_dir / "training_metadata.json").read_text())
    latest = backup_dir / metadata["weights"]
    latest.write_bytes(latest.read_bytes()[:1000])
    callback = ki.callbacks.BackupAndRestore(backup_dir, save_freq=2)
    with pytest.raises(OSError, match=metadata["weights"]):
        _model().fit(_digits(), epochs=1, callbacks=[callback], verbose=0)


def test_backup_of_another_model_is_refused(tmp_path):
    backup_dir = tmp_path / "backup"
    callback = ki.callbacks.BackupAndRestore(
        backup_dir, save_freq=2, delete_checkpoint=False
    )
    data = _digits()
    _model().fit(data, epochs=1, steps_per_epoch=2, callbacks=[callback], verbose=0)
    other = _model(family=ki.ImmiscibleDiffusion)
    with pytest.raises(ValueError, match="written by a ImmiscibleFlowMatching"):
        other.fit(data, epochs=2, callbacks=[callback], verbose=0)
    with pytest.raises(ValueError, match="save_freq"):
        ki.callbacks.BackupAndRestore(backup_dir, save_freq=0)


# ------------------------------------------------------------ damaged inputs


def test_truncated_keras_file_names_the_file(tmp_path):
    """Keras' own error for a truncated `.keras` file names the file (it
    calls it "not found", though: the examples' `--resume` wraps it, see
    tests/test_examples.py)."""
    model = _model()
    model.build()
    path = tmp_path / "model.keras"
    model.save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="model.keras"):
        keras.saving.load_model(path)


def _write(path, array, mode=None, format=None):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path, format=format)


def test_from_directory_names_the_files_it_cannot_use(tmp_path):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(0)
    good = rng.integers(0, 256, (8, 8, 3), dtype="uint8")
    for i in range(2):
        _write(tmp_path / f"good_{i}.png", good)
    (tmp_path / "readme.txt").write_text("not an image, and not named one")
    ki.data.from_directory(tmp_path, 8, 2)  # other extensions: ignored

    # A file named like an image that is not one.
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.png' is not an image"):
        ki.data.from_directory(tmp_path, 8, 2)
    os.remove(tmp_path / "notes.png")

    # Alpha and CMYK channels: refused, every file named.
    _write(tmp_path / "rgba.png", rng.integers(0, 256, (8, 8, 4), "uint8"))
    _write(tmp_path / "cmyk.jpg", rng.integers(0, 256, (8, 8, 4), "uint8"), mode="CMYK")
    _write(
        tmp_path / "grey_alpha.png", rng.integers(0, 256, (8, 8, 2), "uint8"), mode="LA"
    )
    with pytest.raises(ValueError) as error:
        ki.data.from_directory(tmp_path, 8, 2, color_mode="grayscale")
    message = str(error.value)
    assert "3 of the 5 image files cannot be used" in message
    for name, what in [
        ("rgba.png", "alpha channel"),
        ("cmyk.jpg", "CMYK"),
        ("grey_alpha.png", "grey + alpha"),
    ]:
        assert name in message and what in message


def test_from_directory_reads_bmp_and_gif_as_grayscale(tmp_path):
    """TensorFlow decodes BMP and GIF files only to RGB: in grayscale mode
    they used to fail inside `fit` with a TensorFlow error naming no file."""
    pytest.importorskip("PIL")
    grey = np.random.default_rng(1).integers(0, 256, (8, 8), dtype="uint8")
    _write(tmp_path / "a.bmp", grey, mode="L")
    _write(tmp_path / "b.gif", grey, mode="L")
    _write(tmp_path / "c.png", grey, mode="L")
    dataset = ki.data.from_directory(
        tmp_path, 8, 3, color_mode="grayscale", shuffle=False, dtype="uint8"
    )
    (batch,) = list(dataset.as_numpy_iterator())
    assert batch.shape == (3, 8, 8, 1)
    for image in batch:  # equal channels, so luma is the grey value +- 1
        np.testing.assert_allclose(image[..., 0], grey, atol=1)


def test_png_writes_are_atomic(tmp_path, monkeypatch):
    """`write_png` (and so `SampleGrid` and `save_image_grid`) never leaves
    a half-written PNG: a write that dies keeps the old file."""
    from keras_immiscible.utils import images as image_utils

    path = tmp_path / "grid.png"
    old = np.zeros((4, 4, 3), "uint8")
    image_utils.write_png(path, old)
    before = path.read_bytes()

    def dying_fsync(fd):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(image_utils.os, "fsync", dying_fsync)
    with pytest.raises(KeyboardInterrupt):
        image_utils.write_png(path, np.full((4, 4, 3), 255, "uint8"))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["grid.png"]  # no stray temporary file
