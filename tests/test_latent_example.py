"""examples/latent_imagenet_classcond.py: defaults, --quick, --resume, no data.

The script runs as a subprocess with the network off and keras-cv blocked
(`--quick` must need neither: mock tensorflow-datasets data and a tiny
autoencoder). The `--quick` and `--resume` runs happen under the backends
of `RUN_BACKENDS` only: a `--quick` run costs about 17 s (TensorFlow), 14 s
(torch) and 29 s (JAX) of CPU on 2 cores, and the module runs two; set
`KI_TEST_LATENT_EXAMPLE=1` to run them under JAX too. The defaults and the
missing-data failure are checked under every backend.
"""

import csv
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from offline_runner import BLOCK_KERAS_CV
from offline_runner import OFFLINE_RUNNER
from PIL import Image

import keras_immiscible  # noqa: F401  (registers the classes to load)

BACKEND = keras.backend.backend()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SCRIPT = os.path.join(EXAMPLES, "latent_imagenet_classcond.py")
RUN_BACKENDS = ("tensorflow", "torch")
RUNS_HERE = BACKEND in RUN_BACKENDS or os.environ.get("KI_TEST_LATENT_EXAMPLE") == "1"

# --quick: 2 epochs of 2 steps; grids of 2 classes x 2 images at guidance 1
# and 3; 16x16 images shown 4x bigger, 1-pixel padding.
QUICK_STEPS, EVAL_EVERY, CLASSES, PER_CLASS = 4, 2, (207, 360), 2
TILE, PAD = 16 * 4, 1

# Runs the script as __main__ with internet sockets refused and keras_cv
# made unimportable.
RUNNER = BLOCK_KERAS_CV + OFFLINE_RUNNER


def run_script(flags, cwd, check=True):
    # examples/common.py: on the path, as when the script runs as a file.
    path = os.pathsep.join(filter(None, (EXAMPLES, os.environ.get("PYTHONPATH"))))
    env = dict(os.environ, KERAS_BACKEND=BACKEND, PYTHONPATH=path)
    if BACKEND == "torch":
        env.setdefault("OMP_NUM_THREADS", "1")  # see conftest.py
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, SCRIPT, *flags],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    if check:
        assert result.returncode == 0, output[-6000:]
    return result, output, time.time() - started


def load_example():
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)  # examples/common.py
    spec = importlib.util.spec_from_file_location("latent_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def read_grid(path):
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.mode == "RGB", path
        return np.asarray(image)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if not RUNS_HERE:
        pytest.skip(
            f"--quick runs under {RUN_BACKENDS} (KI_TEST_LATENT_EXAMPLE=1: here)"
        )
    root = tmp_path_factory.mktemp("latent_example")
    output = root / "run"
    _, text, seconds = run_script(["--quick", "--output", str(output)], root)
    print(f"--quick on {BACKEND}: {seconds:.1f} s wall")
    return output, text


def test_defaults_are_the_official_configuration(capsys):
    example = load_example()
    args = example.parse_args([])
    assert (args.image_size, args.batch_size, args.steps) == (256, 2048, 20_000)
    assert args.learning_rate == 1e-4 and args.weight_decay == 1e-2
    assert (args.grad_clip, args.ema, args.eval_every, args.seed) == (
        1.0,
        0.9999,
        2500,
        42,
    )
    assert args.assignment == "linear" and not args.per_class and args.k == 64
    assert args.label_dropout == 0.1 and args.mixed_precision == "float16"
    assert args.widths == (320, 640, 1280, 1280) and args.block_depth == 2
    assert args.attention == (32, 16, 8) and args.heads == 8 and args.groups == 32
    assert args.sampling_steps == 20 and args.guidance_scales == (1.0, 3.0, 7.5)
    assert args.grid_classes == (207, 360, 387, 974, 88, 979, 417, 279)
    knn = example.parse_args(["--assignment", "knn"])
    assert (knn.assignment, knn.k) == ("knn", 64)
    assert example.parse_args(["--per-class"]).per_class
    # SD-1.x latents of 256x256 images: 32x32x4, where the attention sits.
    assert args.image_size // 8 == max(args.attention) == 32
    # Every default names its source in --help.
    with pytest.raises(SystemExit):
        example.parse_args(["--help"])
    text = capsys.readouterr().out
    for phrase in (
        "--max_train_steps=20000",
        "--checkpointing_steps=2500",
        "256 per GPU x 8 GPUs",
        "k = 64",
        "constant, no warm-up",
        "--mixed_precision",
        "DiT",
    ):
        assert phrase in " ".join(text.split()), phrase
    # --quick shrinks, and explicit flags still win.
    quick = example.parse_args(["--quick", "--steps", "6"])
    assert (quick.image_size, quick.batch_size, quick.steps) == (16, 16, 6)


def test_quick_run_writes_grids_model_and_log(quick_run):
    import keras_immiscible as ki

    output, text = quick_run
    assert "Trained to step 4" in text
    rows = read_log(output / "log.csv")
    assert [int(r["step"]) for r in rows] == [2, 4]
    losses = [float(r["loss"]) for r in rows]
    assert all(math.isfinite(v) and 0.1 < v < 10 for v in losses), losses
    gains = [float(r["assignment_gain"]) for r in rows]
    assert all(0 < g < 0.5 for g in gains), gains  # linear assignment
    # One grid per guidance scale and epoch: 2 class rows x 2 tiles.
    side_h = len(CLASSES) * TILE + (len(CLASSES) + 1) * PAD
    side_w = PER_CLASS * TILE + (PER_CLASS + 1) * PAD
    for scale in ("1", "3"):
        for epoch in (1, 2):
            grid = read_grid(
                output / "samples" / f"guidance_{scale}" / f"epoch_{epoch:04d}.png"
            )
            assert grid.shape == (side_h, side_w, 3)
    # The saved model is the latent, class-conditional, guided model, and
    # regenerates the final grid.
    model = keras.models.load_model(output / "model.keras")
    assert isinstance(model, ki.ImmiscibleDiffusion)
    assert isinstance(model.autoencoder, ki.latent.Autoencoder)
    assert tuple(model.image_shape) == (4, 4, 4) and model.data_shape == (16, 16, 3)
    assert model.label_dropout == pytest.approx(0.1)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == QUICK_STEPS
    assert isinstance(model.optimizer.get_config()["learning_rate"], float)  # constant
    labels = np.repeat(CLASSES, PER_CLASS)
    for scale in (1.0, 3.0):
        final = read_grid(output / f"samples_guidance_{scale:g}.png")
        samples = model.generate(
            4, steps=2, seed=42, labels=labels, guidance_scale=scale, verbose=0
        )
        from keras_immiscible.utils.images import make_image_grid

        expected = make_image_grid(samples, num_rows=2, scale=4)
        assert final.shape == expected.shape
        assert np.abs(final.astype(int) - expected.astype(int)).max() <= 1
    # (That the grids show the labels and scale asked for, independently of
    # this barely trained model: tests/test_callbacks.py.)
    assert (output / "checkpoints" / "last.keras").is_file()
    assert (output / "backup" / "training_metadata.json").is_file()


def test_resume_continues_from_the_backup(quick_run, tmp_path):
    output, _ = quick_run
    copy = tmp_path / "run"
    shutil.copytree(output, copy)
    _, text, _ = run_script(
        ["--quick", "--output", str(copy), "--resume", "--steps", "6"], tmp_path
    )
    assert "Resuming" in text and "at step 4" in text
    assert "steps 4 -> 6" in text and "Trained to step 6" in text
    rows = read_log(copy / "log.csv")
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    # The first two rows are the first run's, kept (append).
    assert [r["loss"] for r in rows[:2]] == [
        r["loss"] for r in read_log(output / "log.csv")
    ]
    assert math.isfinite(float(rows[2]["loss"]))
    model = keras.models.load_model(copy / "model.keras")
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 6
    assert (copy / "samples" / "guidance_3" / "epoch_0003.png").is_file()
    # --resume without a backup says what to do.
    result, text, _ = run_script(
        ["--quick", "--output", str(tmp_path / "empty"), "--resume"],
        tmp_path,
        check=False,
    )
    assert result.returncode != 0 and "no backup" in text


def test_real_run_without_imagenet_fails_at_once(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    empty = tmp_path / "tfds"
    empty.mkdir()
    result, text, seconds = run_script(
        ["--data-dir", str(empty), "--output", str(tmp_path / "out")],
        tmp_path,
        check=False,
    )
    assert result.returncode != 0
    assert "DatasetNotPreparedError" in text and "imagenet2012" in text
    assert "ILSVRC2012_img_train.tar" in text and "--manual_dir" in text
    # Before anything was built or written (keras-cv is blocked: the VAE
    # would have failed with an ImportError instead).
    assert "keras_cv is blocked" not in text
    assert not (tmp_path / "out" / "checkpoints").exists()
    assert seconds < 120, seconds  # imports only, on a loaded 2-core machine
