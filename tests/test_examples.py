"""The example scripts, end to end, in `--quick` mode.

Every example runs once per CI run (which runs this file under each
backend): each is assigned one backend below and runs, as a subprocess, only
in the test session of that backend. The checks read what the run wrote:
the CSV log (columns, one row per evaluation with the right step count,
finite values, the assignment gain of the chosen assigner), the PNG grids
(decoded, of the expected size), and the saved model, reloaded here, which
must regenerate the final grid's images. `--resume` is checked on a copy of
a run: the optimizer's step counter (and the consistency model's curriculum
counter) carry on from `ki.callbacks.BackupAndRestore`'s backup, and a
resumed digits run ends bit for bit where the run that never stopped ends.
`train_digits.py` (the README's main job) runs once per family: flow
matching, its default, and DDIM. The real-data path of the tensorflow-datasets
examples runs on `tfds.testing.mock_data`.
"""

import csv
import importlib
import math
import os
import shutil
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from PIL import Image

import keras_immiscible  # noqa: F401  (registers the classes to load)

BACKEND = keras.backend.backend()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")

# The --quick configuration every example shares: 2 evaluations of 2 steps,
# grids of 16 images (4 x 4 tiles), 1 px padding.
QUICK_STEPS = 4
QUICK_EVAL_EVERY = 2
# The README's main job's length (under 3 minutes on 2 CPU cores).
DIGITS_STEPS = 1200
DIGITS_EVAL_EVERY = 400
GRID_IMAGES = 16
COLUMNS = {
    "epoch",
    "step",
    "loss",
    "assignment_gain",
    "val_kid",
    "val_fid",
    "wall_time",
}

# case -> the script (default: the case's name), the backend that runs it,
# extra flags, and what the run must give.
CASES = {
    "train_digits": {
        "backend": "tensorflow",
        "flags": [],
        "assignment": "linear",
        "image_size": 16,
        "channels": 1,
        "sampling_steps": 5,
        "model": "ImmiscibleFlowMatching",
        # The library's AdamW: an EMA with warm-up.
        "optimizer": ("keras_immiscible>AdamW", {"ema_warmup": 10.0}),
    },
    "train_digits_ddim": {
        "script": "train_digits",
        "backend": "jax",
        "flags": ["--family", "ddim", "--image-size", "8"],
        "assignment": "linear",
        "image_size": 8,
        "channels": 1,
        "sampling_steps": 5,
        "model": "ImmiscibleDiffusion",
        "optimizer": ("keras_immiscible>AdamW", {"ema_warmup": 10.0}),
    },
    "ddim_oxford_flowers": {
        "backend": "tensorflow",
        "flags": ["--assignment", "none"],
        "assignment": "none",
        "image_size": 16,
        "channels": 3,
        "sampling_steps": 5,
        "model": "ImmiscibleDiffusion",
        # The keras.io example's AdamW (weight decay 1e-4), Keras' EMA.
        "optimizer": ("keras>AdamW", {"weight_decay": 1e-4}),
    },
    "flow_matching_cifar10": {
        "backend": "jax",
        "flags": [],
        "assignment": "knn",
        "image_size": 16,
        "channels": 3,
        "sampling_steps": 5,
        "model": "ImmiscibleFlowMatching",
        # Adam with gradient clipping 1.0 (paper 2's code).
        "optimizer": ("keras>Adam", {"global_clipnorm": 1.0}),
    },
    "ddim_cifar10": {
        "backend": "torch",
        "flags": ["--assignment", "knn", "--k", "3"],
        "assignment": "knn",
        "image_size": 16,
        "channels": 3,
        "sampling_steps": 5,
        "model": "ImmiscibleDiffusion",
        "optimizer": ("keras>Adam", {"global_clipnorm": 1.0}),
    },
    "consistency_cifar10": {
        "backend": "torch",
        "flags": [],
        "assignment": "linear",
        "image_size": 16,
        "channels": 3,
        "sampling_steps": 1,
        "model": "ImmiscibleConsistency",
        # The CT config: no clipping.
        "optimizer": ("keras>Adam", {"global_clipnorm": None}),
    },
}
HERE = sorted(name for name, case in CASES.items() if case["backend"] == BACKEND)


def load_example(name):
    """Imports `examples/<name>.py` as a module."""
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    return importlib.import_module(name)


def script(name):
    """The example script (module name) of a case."""
    return CASES[name].get("script", name)


def run_quick(name, output, extra=()):
    """Runs a case's example in --quick mode as a subprocess; returns wall
    seconds."""
    env = dict(os.environ)
    env["KERAS_BACKEND"] = CASES[name]["backend"]
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # One intra-op thread: the quick runs' ops are tiny, and on a small
    # shared CI machine thread pools waiting on each other made torch's
    # steps 10x slower.
    env["OMP_NUM_THREADS"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    command = [
        sys.executable,
        os.path.join(EXAMPLES, script(name) + ".py"),
        "--quick",
        "--output",
        str(output),
        *CASES[name]["flags"],
        *extra,
    ]
    start = time.time()
    result = subprocess.run(
        command,
        check=False,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.time() - start
    assert result.returncode == 0, (
        f"{' '.join(command)} failed ({result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    print(f"\n{name} --quick ({BACKEND}): {seconds:.1f} s wall")
    return seconds


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Output folder of each example of this backend, run once."""
    outputs = {}

    def get(name):
        if name not in outputs:
            output = tmp_path_factory.mktemp(name)
            run_quick(name, output)
            outputs[name] = output
        return outputs[name]

    return get


def read_log(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [{k: float(v) for k, v in row.items()} for row in reader]
        return reader.fieldnames, rows


def grid_tiles(path, count, size, channels, scale):
    """Cuts a `make_image_grid` PNG back into (count, size, size, C) uint8
    tiles, with the layout computed here: ceil(sqrt(n)) columns, 1 px
    padding around and between the tiles."""
    image = np.asarray(Image.open(path))
    if image.ndim == 2:
        image = image[..., None]
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    tile = size * scale
    assert image.shape == (
        rows * tile + rows + 1,
        cols * tile + cols + 1,
        channels,
    ), image.shape
    tiles = []
    for i in range(count):
        top = 1 + (i // cols) * (tile + 1)
        left = 1 + (i % cols) * (tile + 1)
        tiles.append(image[top : top + tile : scale, left : left + tile : scale])
    return np.stack(tiles)


@pytest.mark.parametrize("name", HERE)
def test_example_quick_run(name, quick_runs):
    case = CASES[name]
    output = quick_runs(name)

    # CSV: one row per evaluation, steps counted by the optimizer.
    columns, rows = read_log(output / "log.csv")
    assert COLUMNS <= set(columns), columns
    assert [row["epoch"] for row in rows] == [0, 1]
    assert [row["step"] for row in rows] == [QUICK_EVAL_EVERY, QUICK_STEPS]
    for row in rows:
        assert all(math.isfinite(value) for value in row.values()), row
        assert row["loss"] > 0 and row["val_fid"] >= 0
    gains = [row["assignment_gain"] for row in rows]
    if case["assignment"] == "none":
        # Random noise: the noise is left where it was drawn.
        assert gains == [0.0, 0.0]
    else:
        # Assigned noise is closer to the images than the draw was.
        assert all(0.0 < gain < 0.5 for gain in gains), gains
    assert rows[1]["wall_time"] > rows[0]["wall_time"] > 0

    # PNG grids: one per evaluation and the final one.
    size, channels = case["image_size"], case["channels"]
    scale = max(1, 32 // size)
    for path in ("samples/epoch_0001.png", "samples/epoch_0002.png"):
        grid_tiles(output / path, GRID_IMAGES, size, channels, scale)
    final = grid_tiles(output / "samples.png", GRID_IMAGES, size, channels, scale)
    assert final.std() > 0  # not a blank grid

    # The saved model reloads and generates the final grid's images again.
    model = keras.models.load_model(output / "model.keras")
    assert tuple(model.image_shape) == (size, size, channels)
    images = model.generate(GRID_IMAGES, steps=case["sampling_steps"], seed=0)
    assert images.shape == (GRID_IMAGES, size, size, channels)
    again = np.round(np.clip(images, 0.0, 1.0) * 255.0)
    difference = np.abs(again - final.astype("float64"))
    assert difference.mean() < 0.5 and np.mean(difference > 2) < 0.01, (
        difference.mean(),
        difference.max(),
    )

    assert type(model).__name__ == case["model"]

    # The checkpoint holds the optimizer at the last step, with its EMA.
    checkpoint = keras.models.load_model(output / "checkpoints" / "last.keras")
    optimizer = checkpoint.optimizer
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == (QUICK_STEPS)
    registered, expected = case["optimizer"]
    package = type(optimizer).__module__.split(".")[0]
    assert f"{package}>{type(optimizer).__name__}" == registered
    assert optimizer.use_ema and optimizer.ema_momentum == 0.9  # --quick
    for name, value in expected.items():
        assert getattr(optimizer, name) == pytest.approx(value), name
    if "ema_warmup" not in expected:
        assert getattr(optimizer, "ema_warmup", None) is None


def check_resume_continues_from_saved_step(quick_runs, tmp_path):
    first = quick_runs("consistency_cifar10")
    output = tmp_path / "resumed"
    shutil.copytree(first, output)
    _, first_rows = read_log(first / "log.csv")

    example = load_example("consistency_cifar10")
    more = QUICK_STEPS + QUICK_EVAL_EVERY
    result = example.main(
        ["--quick", "--resume", "--output", str(output), "--steps", str(more)]
    )
    model = result["model"]
    assert result["initial_step"] == QUICK_STEPS
    # The optimizer's counter carried on: 4 saved + 2 new updates.
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == more
    # So did the consistency curriculum's own step counter.
    assert int(keras.ops.convert_to_numpy(model.training_steps)) == more

    columns, rows = read_log(output / "log.csv")
    assert COLUMNS <= set(columns)
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert [row["step"] for row in rows] == [2, 4, 6]
    assert rows[:2] == first_rows  # appended, not rewritten
    assert all(math.isfinite(v) for v in rows[2].values())
    assert os.path.exists(output / "samples" / "epoch_0003.png")


def check_digits_resume(name, quick_runs, tmp_path):
    """`train_digits.py --resume` continues a quick run of `name`'s family
    exactly (the other family is refused): its final model is the model of
    a run that went to the same step without stopping, bit for bit."""
    first = quick_runs(name)
    output = tmp_path / "resumed"
    shutil.copytree(first, output)
    _, first_rows = read_log(first / "log.csv")

    example = load_example("train_digits")
    flags = ["--quick", "--resume", "--output", str(output)]
    flags += CASES[name]["flags"]
    other = "flow" if "ddim" in CASES[name]["flags"] else "ddim"
    written_by = CASES[name]["model"]
    with pytest.raises(ValueError, match=f"written by a {written_by}, but"):
        example.main([*flags, "--family", other])
    # A damaged (truncated) backup: an error that names the file.
    damaged = tmp_path / "damaged"
    shutil.copytree(first, damaged)
    (truncated,) = (damaged / "backup").glob("*.weights.h5")
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(OSError, match="Could not load the backup"):
        example.main(
            ["--quick", "--resume", "--output", str(damaged), *CASES[name]["flags"]]
        )
    # --resume without a backup says so.
    with pytest.raises(FileNotFoundError, match="no backup"):
        example.main(
            [
                "--quick",
                "--resume",
                "--output",
                str(tmp_path / "empty"),
                *CASES[name]["flags"],
            ]
        )

    # Resumed and uninterrupted, both as subprocesses (same threads, same
    # process state).
    more = QUICK_STEPS + QUICK_EVAL_EVERY
    run_quick(name, output, extra=["--resume", "--steps", str(more)])
    uninterrupted = tmp_path / "uninterrupted"
    run_quick(name, uninterrupted, extra=["--steps", str(more)])

    model = keras.models.load_model(output / "model.keras")
    assert type(model).__name__ == CASES[name]["model"]
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == more
    _, rows = read_log(output / "log.csv")
    assert [row["step"] for row in rows] == [2, 4, 6]
    assert rows[:2] == first_rows
    assert os.path.exists(output / "samples" / "epoch_0003.png")

    reference = keras.models.load_model(uninterrupted / "model.keras")
    assert len(model.variables) == len(reference.variables)
    difference = max(
        float(
            np.max(
                np.abs(
                    keras.ops.convert_to_numpy(a).astype("float64")
                    - keras.ops.convert_to_numpy(b).astype("float64")
                ),
                initial=0.0,
            )
        )
        for a, b in zip(model.variables, reference.variables)
    )
    assert difference == 0.0, difference
    _, reference_rows = read_log(uninterrupted / "log.csv")
    for row, expected in zip(rows, reference_rows):
        row, expected = dict(row), dict(expected)
        row.pop("wall_time"), expected.pop("wall_time")
        assert row == expected


def test_example_defaults_are_the_papers():
    """The default configuration of each example (no flags), against the
    papers' and codes' values, and the sources named in the tables."""
    ddim_module = load_example("ddim_cifar10")
    ddim = ddim_module.parse_args([])
    assert (ddim.image_size, ddim.batch_size, ddim.assignment) == (
        32,
        256,
        "linear",
    )
    assert (ddim.learning_rate, ddim.warmup_steps, ddim.ema) == (
        2e-4,
        5000,
        0.9999,
    )
    assert ddim.widths == (128, 256, 256, 256) and ddim.attention == (16,)
    assert (ddim.solver, ddim.distance, ddim.quantize) == ("scipy", "l2", True)
    assert ddim.steps == 2040 * (50_000 // 256)  # ddpm-torch's 2040 epochs
    assert "ddpm-torch" in ddim_module.CONFIG["learning_rate"].source
    assert "2406.12303" in ddim_module.CONFIG["batch_size"].source

    flow_module = load_example("flow_matching_cifar10")
    flow = flow_module.parse_args([])
    assert (flow.assignment, flow.k, flow.batch_size, flow.steps) == (
        "knn",
        4,
        256,
        400_000,
    )
    assert (flow.sampler, flow.sampling_steps) == ("euler", 50)
    assert (flow.num_heads, flow.grad_clip, flow.warmup_steps) == (4, 1.0, 5000)
    assert "train_otcfm.sh" in flow_module.CONFIG["steps"].source

    consistency_module = load_example("consistency_cifar10")
    consistency = consistency_module.parse_args([])
    assert (consistency.batch_size, consistency.assignment) == (512, "linear")
    assert consistency.sampling_steps == 1
    assert (consistency.steps, consistency.loss) == (800_000, "pseudo_huber")
    # 10M images of warm-up at batch 512.
    assert consistency.warmup_steps == 10_000_000 // 512
    assert "consistency_models_cifar10" in (consistency_module.CONFIG["steps"].source)

    flowers_module = load_example("ddim_oxford_flowers")
    flowers = flowers_module.parse_args([])
    assert (flowers.image_size, flowers.batch_size) == (64, 64)
    assert flowers.widths == (32, 64, 96, 128) and flowers.block_depth == 2
    assert (
        flowers.learning_rate,
        flowers.weight_decay,
        flowers.ema,
        flowers.loss,
    ) == (1e-3, 1e-4, 0.999, "mae")
    assert (flowers.sampling_steps, flowers.eval_sampling_steps) == (20, 5)
    assert flowers.steps == 50 * 510 and flowers.eval_every == 510
    assert all(
        "keras.io" in flowers_module.CONFIG[key].source
        for key in ("image_size", "widths", "ema", "loss", "steps")
    )

    # The README's main job: `python examples/train_digits.py`, no flags:
    # flow matching + linear assignment at 16x16, few sampling steps
    # (docs/benchmarks/convergence_regime.md).
    train_digits = load_example("train_digits")
    digits = train_digits.parse_args([])
    assert (digits.family, digits.image_size, digits.assignment) == (
        "flow",
        16,
        "linear",
    )
    assert (digits.widths, digits.block_depth) == ((16, 32), 1)
    assert digits.sampling_steps == 10
    assert (digits.steps, digits.eval_every) == (DIGITS_STEPS, DIGITS_EVAL_EVERY)
    assert (digits.batch_size, digits.seed) == (128, 0)
    assert digits.output == os.path.join("outputs", "digits")
    assert (digits.learning_rate, digits.ema, digits.ema_warmup) == (
        1e-3,
        0.99,
        10.0,
    )
    assert "convergence_regime.md" in train_digits.__doc__
    for key in ("family", "image_size", "assignment", "sampling_steps"):
        assert "convergence_regime.md" in train_digits.CONFIG[key].source
    # The quick run keeps the family, the size and the assignment.
    quick = train_digits.parse_args(["--quick"])
    assert (quick.family, quick.image_size, quick.assignment) == (
        "flow",
        16,
        "linear",
    )
    assert (quick.steps, quick.eval_every) == (QUICK_STEPS, QUICK_EVAL_EVERY)
    assert quick.output == os.path.join("outputs", "digits_quick")
    ddim = train_digits.parse_args(["--family", "ddim", "--image-size", "8"])
    assert (ddim.family, ddim.image_size) == ("ddim", 8)
    assert train_digits.parse_args(["--ema-warmup", "0"]).ema_warmup == 0
    for bad in (
        ["--family", "consistency"],
        ["--ema-warmup", "0.5"],
        ["--image-size", "12"],
        ["--data-dir", "x"],  # no tensorflow-datasets data here
    ):
        with pytest.raises(SystemExit):
            train_digits.parse_args(bad)


def test_help_names_the_sources(capsys):
    """`--help` shows every default with its source and --quick value."""
    with pytest.raises(SystemExit):
        load_example("ddim_cifar10").parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: 256 (paper 1, Li et al. 2024, arXiv 2406.12303)" in text
    assert "--quick: 32" in text
    assert "default: 128,256,256,256 (tqch/ddpm-torch" in text


def test_quick_flags_and_explicit_flags():
    module = load_example("ddim_cifar10")
    quick = module.parse_args(["--quick"])
    assert (
        quick.image_size,
        quick.steps,
        quick.eval_every,
        quick.grid_images,
    ) == (16, QUICK_STEPS, QUICK_EVAL_EVERY, GRID_IMAGES)
    assert quick.output == os.path.join("outputs", "ddim_cifar10_quick")
    # An explicit flag wins over both the paper and the quick value.
    mixed = module.parse_args(["--quick", "--batch-size", "8", "--no-quantize"])
    assert (mixed.batch_size, mixed.quantize) == (8, False)
    assert module.parse_args(["--widths", "8,16", "--attention", ""]).widths == (8, 16)
    assert module.parse_args(["--attention", ""]).attention == ()
    for bad in (
        ["--quick", "--image-size", "12"],  # the digits stand-in: 8, 16, 32
        ["--steps", "0"],
        ["--ema", "1.0"],
        ["--assignment", "hungarian"],
        ["--widths", "0,8"],
        ["--learning-rate", "0"],
    ):
        with pytest.raises(SystemExit):
            module.parse_args(bad)


def check_real_run_without_data_fails_at_once(tmp_path):
    from keras_immiscible.data import DatasetNotPreparedError

    example = load_example("ddim_cifar10")
    with pytest.raises(DatasetNotPreparedError, match="tfds build cifar10"):
        example.main(
            [
                "--data-dir",
                str(tmp_path / "empty"),
                "--output",
                str(tmp_path / "out"),
            ]
        )
    # Nothing was trained or written.
    assert not os.path.exists(tmp_path / "out" / "log.csv")


# The real-data path at its smallest: 2 steps of batch 4 at 16x16, KID/FID
# of 4 generated against 6 real images.
TINY_REAL_RUN = [
    "--image-size",
    "16",
    "--batch-size",
    "4",
    "--steps",
    "2",
    "--eval-every",
    "2",
    "--widths",
    "8,16",
    "--block-depth",
    "1",
    "--eval-images",
    "4",
    "--eval-real-images",
    "6",
    "--grid-images",
    "4",
    "--sampling-steps",
    "2",
    "--inception-weights",
    "none",
]


def check_tfds_data_under_mock_data(tmp_path, monkeypatch):
    """The real runs' data path (the tensorflow-datasets loaders) on tfds'
    mock data: the examples train, evaluate and save. Inception-V3 (tested
    in test_metrics.py, minutes on a CPU at 299x299) is replaced by the
    images' mean colour, after checking what the example asks for."""
    import tensorflow_datasets as tfds

    import keras_immiscible as ki

    asked = []

    class MeanColour(ki.metrics.CallableFeatureExtractor):
        def __init__(self, weights="imagenet"):
            asked.append(weights)
            super().__init__(lambda x: np.asarray(x, "float32").mean((1, 2)))
            self.model = None  # what the example builds up front

    monkeypatch.setattr(ki.metrics, "InceptionFeatureExtractor", MeanColour)
    for name, size, extra in (
        ("ddim_cifar10", 16, ["--attention", "", "--warmup-steps", "0"]),
        # At its own size, 64: grids of unscaled tiles.
        ("ddim_oxford_flowers", 64, ["--eval-sampling-steps", "2"]),
    ):
        output = tmp_path / name
        with tfds.testing.mock_data(num_examples=10):
            result = load_example(name).main(
                [
                    *TINY_REAL_RUN,
                    *extra,
                    "--image-size",
                    str(size),
                    "--output",
                    str(output),
                ]
            )
        model = result["model"]
        assert tuple(model.image_shape) == (size, size, 3)
        assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
        columns, rows = read_log(output / "log.csv")
        assert COLUMNS <= set(columns) and len(rows) == 1
        assert math.isfinite(rows[0]["val_fid"]) and rows[0]["val_fid"] >= 0
        assert 0.0 < rows[0]["assignment_gain"] < 0.5
        grid_tiles(output / "samples.png", 4, size, 3, max(1, 32 // size))
    assert asked == [None, None]  # --inception-weights none


# Checks that need one backend run once per CI run (which runs this file
# under every backend): defined only in the session of that backend.
if BACKEND == CASES["consistency_cifar10"]["backend"]:
    test_resume_continues_from_saved_step = check_resume_continues_from_saved_step
if BACKEND == CASES["train_digits"]["backend"]:

    def test_digits_flow_resume(quick_runs, tmp_path):
        check_digits_resume("train_digits", quick_runs, tmp_path)


if BACKEND == CASES["train_digits_ddim"]["backend"]:

    def test_digits_ddim_resume(quick_runs, tmp_path):
        check_digits_resume("train_digits_ddim", quick_runs, tmp_path)


if BACKEND == "tensorflow":
    test_real_run_without_data_fails_at_once = check_real_run_without_data_fails_at_once
    test_tfds_data_under_mock_data = check_tfds_data_under_mock_data
