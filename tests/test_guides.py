"""The guides in guides/ run top to bottom in their smoke mode.

Every guide runs as a script (`python guides/<name>.py` semantics, in a
subprocess) with `KI_GUIDE_SMOKE=1`, in a temporary working directory, with
the network switched off (outgoing TCP/UDP connections raise). The suite
runs once per backend, so each guide runs under one backend only
(`GUIDE_BACKENDS`); `KI_TEST_ALL_GUIDES=1` runs every guide under the
current backend. The tests then check what the guide printed and wrote:
numbers that parse and make sense, files that exist and decode.

The header and length checks are cheap and run under every backend.
"""

import ast
import csv
import datetime
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from offline_runner import OFFLINE_RUNNER

GUIDES_DIR = Path(__file__).resolve().parent.parent / "guides"
BACKEND = keras.backend.backend()

# The backend each guide runs under in the test suite (spread so that each
# backend's run of the suite stays short).
# Smoke-mode CPU time on 2 cores (user, s), jax / tensorflow / torch:
# 5 minutes 43 / 33 / 11, flowers 28 / 17 / 11, choosing 31 / 13 / 11,
# own assigner 22 / 14 / 9; going multi-device (4 virtual devices, wall) 20 / 34 / -.
# (The JAX run also has the multi-device guide and the slowest suite: the
# own-assigner guide runs under torch, where it is cheapest.)
GUIDE_BACKENDS = {
    "immiscible_diffusion_in_5_minutes": "torch",
    "immiscible_ddim_oxford_flowers": "tensorflow",
    "choosing_an_assigner": "torch",
    "writing_your_own_assigner": "torch",
    "going_multi_device": "jax",
}

RUN_ALL = os.environ.get("KI_TEST_ALL_GUIDES") == "1"

# Runs a guide as __main__ with the network off: the guides must not
# download anything in smoke mode.
RUNNER = OFFLINE_RUNNER

HEADER_FIELDS = (
    "Title",
    "Author",
    "Date created",
    "Last modified",
    "Description",
    "Accelerator",
)


def guide_path(name):
    return GUIDES_DIR / f"{name}.py"


def run_guide(name, tmp_path):
    env = dict(os.environ)
    env["KI_GUIDE_SMOKE"] = "1"
    env["KERAS_BACKEND"] = BACKEND
    env.pop("KI_GUIDE_IMAGE_DIR", None)
    if BACKEND == "torch":
        # Eager torch runs many tiny ops; on a small shared CPU its thread
        # pool makes them much slower (see conftest.py).
        env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(guide_path(name))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} failed:\n{output[-6000:]}"
    return result.stdout, tmp_path / "outputs" / name


def runs_here(name):
    return RUN_ALL or GUIDE_BACKENDS[name] == BACKEND


def guides_here():
    names = [n for n in sorted(GUIDE_BACKENDS) if runs_here(n)]
    return names


def read_png(path, mode):
    from PIL import Image

    assert path.is_file(), f"missing {path}"
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.mode == mode, (path, image.mode)
        array = np.asarray(image)
    assert array.std() > 0, f"{path} is a constant image"
    return array


def grid_side(count, tile, scale, padding=1):
    return count * tile * scale + (count + 1) * padding


def keras_archive_config(path):
    assert path.is_file(), f"missing {path}"
    with zipfile.ZipFile(path) as archive:
        assert "model.weights.h5" in archive.namelist()
        return archive.read("config.json").decode("utf-8")


def floats(pattern, text, count=None):
    """All matches of `pattern` (its groups parsed as floats)."""
    found = [
        tuple(float(g) for g in m.groups())
        for m in re.finditer(pattern, text, re.MULTILINE)
    ]
    if count is not None:
        assert len(found) == count, (pattern, found, text[-3000:])
    for values in found:
        assert all(math.isfinite(v) for v in values), (pattern, values)
    return found


# ------------------------------------------------------------------ format


def header_date(text):
    """A header date: keras.io's YYYY/MM/DD, a real calendar date, not
    before the immiscible diffusion paper (2024) and not in the future (one
    day of slack for the author's time zone)."""
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}", text), text
    date = datetime.datetime.strptime(text, "%Y/%m/%d").date()  # 2026/02/30 fails
    tomorrow = datetime.date.today() + datetime.timedelta(days=1)
    assert datetime.date(2024, 1, 1) <= date <= tomorrow, text
    return date


@pytest.mark.parametrize(
    "text, ok",
    [
        ("2026/11/26", True),
        ("2026-11-26", False),
        ("2026/2/3", False),
        ("2026/02/30", False),
        ("2023/12/31", False),
        ("2999/01/01", False),
    ],
)
def test_header_date_check(text, ok):
    if ok:
        assert header_date(text) == datetime.date(2026, 11, 26)
    else:
        with pytest.raises((AssertionError, ValueError)):
            header_date(text)


def test_every_guide_has_a_backend():
    on_disk = sorted(p.stem for p in GUIDES_DIR.glob("*.py"))
    assert on_disk == sorted(GUIDE_BACKENDS)
    assert set(GUIDE_BACKENDS.values()) == {"tensorflow", "jax", "torch"}


@pytest.mark.parametrize("name", sorted(GUIDE_BACKENDS))
def test_guide_format(name):
    source = guide_path(name).read_text(encoding="utf-8")
    lines = source.splitlines()
    assert len(lines) < 300, f"{name}: {len(lines)} lines"
    module = ast.parse(source)
    header = ast.get_docstring(module, clean=False)
    fields = dict(line.split(": ", 1) for line in header.strip().splitlines())
    assert tuple(fields) == HEADER_FIELDS
    assert fields["Author"] == "keras-immiscible contributors"
    created = header_date(fields["Date created"])
    modified = header_date(fields["Last modified"])
    assert created <= modified, (created, modified)
    assert fields["Accelerator"] in ("None (CPU)", "GPU")
    assert len(fields["Description"]) <= 200
    # Markdown cells: bare triple-quoted strings between the code.
    cells = [
        node.value.value
        for node in module.body[1:]
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    ]
    assert cells[0].lstrip().startswith("## Introduction")
    assert any(c.lstrip().startswith("## Setup") for c in cells)
    assert 'os.environ.get("KI_GUIDE_SMOKE") == "1"' in source


# -------------------------------------------------------------- execution


@pytest.mark.parametrize("name", guides_here())
def test_guide_runs_in_smoke_mode(name, tmp_path):
    stdout, outputs = run_guide(name, tmp_path)
    CHECKS[name](stdout, outputs)


def check_five_minutes(stdout, outputs):
    scores = {
        m.group(1): [float(v) for v in m.groups()[1:]]
        for m in re.finditer(
            r"^\s*(linear|vanilla): FID (\S+)  KID (\S+)  "
            r"assignment_gain (\S+)$",
            stdout,
            re.MULTILINE,
        )
    }
    assert sorted(scores) == ["linear", "vanilla"], stdout[-3000:]
    for fid, kid, _ in scores.values():
        assert math.isfinite(fid) and fid >= 0.0
        assert math.isfinite(kid)
    check_digits_scores(outputs / "digits_linear.keras", *scores["linear"][:2])
    assert 0.0 < scores["linear"][2] < 0.5
    assert scores["vanilla"][2] == 0.0
    (diff,) = floats(r"max sample difference (\S+)$", stdout, count=1)[0]
    assert diff < 1e-4

    side = grid_side(8, 8, 4)
    for arm in ("linear", "vanilla"):
        grid = read_png(outputs / f"samples_{arm}.png", "L")
        assert grid.shape == (side, side)
    assert "LinearAssignment" in keras_archive_config(outputs / "digits_linear.keras")

    # The "your own images" path: the PNG folder it wrote holds the digits.
    from keras_immiscible.data import load_digits

    files = sorted((outputs / "my_images").glob("*.png"))
    assert len(files) == 256
    digits = load_digits(dtype="uint8", image_size=16)
    np.testing.assert_array_equal(read_png(files[0], "L"), digits[0, ..., 0])
    np.testing.assert_array_equal(read_png(files[-1], "L"), digits[255, ..., 0])
    assert re.search(
        r"^256 images from .*my_images, batches of "
        r"\(64, 16, 16, 1\)$",
        stdout,
        re.MULTILINE,
    )
    grid = read_png(outputs / "samples_my_images.png", "L")
    assert grid.shape == (grid_side(4, 16, 2),) * 2
    assert "LinearAssignment" in keras_archive_config(outputs / "my_images.keras")


def check_digits_scores(model_path, fid, kid):
    """The guide's printed FID and KID of its linear model, redone here.

    The smoke run trains too little (11 steps) for a quality bound: its
    KID (about 1,600 in the digits feature space) is that of an untrained
    model, and uniform noise scores better (about 1,070). So the check is
    that the printed numbers are the metrics of that model's samples: the
    saved model generates the guide's evaluation images again (64 images,
    5 DDIM steps, seed 1), and FID (scipy's sqrtm) and KID (unbiased MMD^2
    with scikit-learn's polynomial kernel) are recomputed on the digits
    features against the test split. FID is deterministic: equal up to the
    printed rounding. KID averages 100 random 64-image subsets of the 360
    real images (all 64 generated ones each time), whose expectation is the
    MMD^2 of the full sets; the tolerance is 5 standard errors of that
    average, with the spread of one subset estimate measured here by
    resampling.
    """
    import warnings

    import scipy.linalg
    from sklearn.metrics.pairwise import polynomial_kernel

    import keras_immiscible as ki

    model = keras.models.load_model(model_path)
    images = model.generate(64, steps=5, seed=1)
    extractor = ki.metrics.digits_feature_extractor()
    gen = np.asarray(extractor(images), dtype=np.float64)
    real = np.asarray(extractor(ki.data.load_digits(split="test")), dtype=np.float64)
    assert real.shape == (360, gen.shape[1]) and gen.shape[0] == 64

    s_real, s_gen = np.cov(real, rowvar=False), np.cov(gen, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular: 64 images, 64 features
        root = scipy.linalg.sqrtm(s_real @ s_gen).real
    expected_fid = np.sum((real.mean(0) - gen.mean(0)) ** 2) + np.trace(
        s_real + s_gen - 2.0 * root
    )
    assert fid == pytest.approx(expected_fid, rel=1e-5, abs=2e-3)

    def mmd2(x, y):
        gamma = 1.0 / x.shape[1]
        kxx, kyy, kxy = (
            polynomial_kernel(a, b, degree=3, gamma=gamma, coef0=1)
            for a, b in ((x, x), (y, y), (x, y))
        )
        m, n = len(x), len(y)
        return (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2.0 * kxy.mean()
        )

    rng = np.random.default_rng(0)
    spread = np.std(
        [mmd2(real[rng.choice(360, 64, replace=False)], gen) for _ in range(200)]
    )
    assert abs(kid - mmd2(real, gen)) < 5.0 * spread / np.sqrt(100), (
        kid,
        mmd2(real, gen),
        spread,
    )


def check_flowers(stdout, outputs):
    ((kid, gain),) = floats(
        r"^epoch 1: val_kid (\S+) assignment_gain (\S+)$", stdout, count=1
    )
    ((best,),) = floats(r"^best val_kid (\S+)$", stdout, count=1)
    assert best == kid
    assert 0.0 < gain < 0.5
    with open(outputs / "log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    assert len(log) == 1
    assert {"val_kid", "assignment_gain", "loss"} <= set(log[0])
    assert float(log[0]["val_kid"]) == pytest.approx(kid, rel=1e-4, abs=1e-5)
    assert math.isfinite(float(log[0]["loss"])) and float(log[0]["loss"]) > 0
    shape = (grid_side(3, 32, 2), grid_side(6, 32, 2), 3)
    assert read_png(outputs / "epoch_001.png", "RGB").shape == shape
    final = read_png(outputs / "final.png", "RGB")
    assert final.shape == shape
    assert final[0].max() == 0  # the grid's top padding row (black)
    with open(outputs / "best.weights.h5", "rb") as f:
        assert f.read(8) == b"\x89HDF\r\n\x1a\n"


def check_assigners(stdout, outputs):
    with open(outputs / "assigners.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    table = {(int(r["batch_size"]), r["assigner"]): r for r in rows}
    names = ("linear/scipy", "linear/auction", "knn/k=4", "knn/k=8")
    assert sorted(table) == sorted((b, n) for b in (32, 64) for n in names)
    for row in rows:
        gain, ms = float(row["gain"]), float(row["ms"])
        assert 0.0 < gain < 0.1, row
        assert math.isfinite(ms) and ms > 0.0, row
    for b in (32, 64):
        gain = {n: float(table[b, n]["gain"]) for n in names}
        # Same batches and seeds: the auction finds the scipy optimum.
        assert gain["linear/auction"] == pytest.approx(gain["linear/scipy"], abs=2e-4)
        assert gain["knn/k=8"] > gain["knn/k=4"]
    ((gap,),) = floats(r"^auction gap: (\S+) of", stdout, count=1)
    assert abs(gap) < 1e-3
    norms = {
        m.group(1): (float(m.group(2)), m.group(3))
        for m in re.finditer(
            r"^(\S+)\s+noise norm / sqrt\(dim\) (\S+), same values as the "
            r"unassigned draw: (True|False)$",
            stdout,
            re.MULTILINE,
        )
    }
    assert norms["linear/scipy"][1] == "True"
    assert norms["knn/k=8"][1] == "False"
    assert abs(norms["linear/scipy"][0] - 1.0) < 0.01
    assert norms["knn/k=8"][0] < norms["linear/scipy"][0]
    assert (
        "{'images': (64, 32, 32, 1), 'noise': (64, 32, 32, 1), "
        "'assignment_gain': (64,)}" in stdout
    )
    ((gain,),) = floats(r"^pipeline assignment_gain: (\S+)$", stdout, count=1)
    assert 0.0 < gain < 0.1


def check_own_assigner(stdout, outputs):
    lines = re.findall(
        r"^order=(global|batch): matches numpy (True|False), total distance "
        r"(\S+) \(optimum (\S+), unassigned (\S+)\), share of the optimal "
        r"reduction (\S+)$",
        stdout,
        re.MULTILINE,
    )
    assert [line[:2] for line in lines] == [
        ("global", "True"),
        ("batch", "True"),
    ], stdout[-3000:]
    shares = {}
    for order, _, total, optimum, unassigned, share in lines:
        total, optimum, unassigned = float(total), float(optimum), float(unassigned)
        assert optimum <= total + 1e-3 <= unassigned + 1e-3
        shares[order] = float(share)
        assert 0.0 < shares[order] <= 1.0
    assert shares["global"] > shares["batch"]
    ((gain,),) = floats(r"^greedy assignment_gain: (\S+)$", stdout, count=1)
    assert 0.0 < gain < 0.5
    assert "reloaded assigner: GreedyAssignment(order='global')" in stdout
    ((diff,),) = floats(
        r"^max sample difference after reloading: (\S+)$", stdout, count=1
    )
    assert diff < 1e-4
    assert (
        "GreedyAssignment {'order': 'batch'} -> GreedyAssignment(order='batch')"
        in stdout
    )
    config = keras_archive_config(outputs / "greedy.keras")
    assert '"registered_name": "my_assigners>GreedyAssignment"' in config


def check_multi_device(stdout, outputs):
    assert re.search(rf"^backend {BACKEND} devices 4$", stdout, re.MULTILINE)
    (diff,) = floats(r"^max loss difference 1 vs 4 devices (\S+)$", stdout, 1)[0]
    (one,) = floats(r"^1 device final loss (\S+)$", stdout, 1)[0]
    (four,) = floats(r"^4 devices final loss (\S+)$", stdout, 1)[0]
    assert 0.0 < one < 10.0 and 0.0 < four < 10.0
    if BACKEND == "jax":
        # 4 devices with the global scope train exactly as 1 device (on TF
        # the replicas draw their own timesteps: a different valid run).
        assert diff < 1e-4 and abs(one - four) < 1e-4, (diff, one, four)
    # Same data and noise draws: the shards' optima pair the noise less
    # closely than the global optimum.
    (glob,) = floats(r"^global scope assignment_gain (\S+)$", stdout, 1)[0]
    (repl,) = floats(r"^replica scope assignment_gain (\S+)$", stdout, 1)[0]
    assert 0.0 < repl <= glob + 1e-3, (glob, repl)
    (auction,) = floats(r"^auction on 4 devices final loss (\S+)$", stdout, 1)[0]
    assert 0.0 < auction < 10.0
    # XLA on JAX; TF cannot XLA-compile MirroredStrategy on virtual CPUs.
    expected = "True" if BACKEND == "jax" else "False"
    assert re.search(rf"^jit_compile {expected}$", stdout, re.MULTILINE)


CHECKS = {
    "going_multi_device": check_multi_device,
    "immiscible_diffusion_in_5_minutes": check_five_minutes,
    "immiscible_ddim_oxford_flowers": check_flowers,
    "choosing_an_assigner": check_assigners,
    "writing_your_own_assigner": check_own_assigner,
}
