"""`benchmarks/per_class_assignment.py` without training: its flags, the
class-prior skew statistics, resume bookkeeping and the report on hand-made
records. (Its `--quick` run trains three models, about two minutes on a
small shared CPU: run it by hand, `python benchmarks/per_class_assignment.py
--quick`.)"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import per_class_assignment as bench  # noqa: E402


def test_flags():
    args = bench.parse_args(["--output", "out"])
    assert args.arms == list(bench.ARMS) and args.seeds == [0, 1, 2]
    assert args.eval_steps == [100, 200, 300, 400, 600, 800]
    assert args.sampling_steps == [5, 10, 20, 50] and args.skew_batches == 800
    quick = bench.parse_args(["--quick"])
    assert quick.seeds == [0] and quick.steps == bench.QUICK["steps"]
    assert os.path.isdir(quick.output)  # a fresh temporary folder
    os.rmdir(quick.output)
    assert bench.parse_args(
        ["--seeds", "3,4", "--arms", "per_class", "--output", "o"]
    ).seeds == [3, 4]
    with pytest.raises(ValueError, match="arms"):
        bench.parse_args(["--arms", "knn4", "--output", "o"])


def test_generation_labels_are_fixed_and_cover_the_classes():
    args = bench.parse_args(["--output", "o"])
    labels = bench.generation_labels(args)
    assert labels.shape == (256,) and labels.dtype == np.int32
    assert np.array_equal(labels, bench.generation_labels(args))
    assert set(labels.tolist()) == set(range(10))


def test_per_class_assignment_keeps_each_class_noise_mean():
    from keras_immiscible.assignment import LinearAssignment
    from keras_immiscible.data import load_digits

    images, labels = load_digits(split="train", return_labels=True)
    images, labels = images[:256], labels[:256]
    stats = {
        arm: bench.class_noise_statistics(
            bench.make_assigner(arm), images, labels, batches=4, batch_size=64, seed=3
        )
        for arm in bench.ARMS
    }
    assert isinstance(bench.make_assigner("per_class"), LinearAssignment)
    for c in range(10):
        vanilla, per_class, linear = (
            stats[a][c] for a in ("vanilla", "per_class", "linear")
        )
        assert vanilla["count"] == per_class["count"] == linear["count"] > 0
        # A permutation of the class's own draws: the same class mean.
        for key in ("shift", "toward", "sq_norm"):
            assert per_class[key] == pytest.approx(vanilla[key], rel=1e-5, abs=1e-6)
    # The global assignment moves every class's noise towards its images.
    toward = {a: np.mean([s["toward"] for s in stats[a]]) for a in bench.ARMS}
    assert toward["linear"] > toward["vanilla"] + 0.3


def _records(fids_by_run, skew=True):
    out = [
        {
            "header": True,
            "command": "x",
            "machine": "m",
            "date": "d",
            "invocation": 1,
            "config": {"seeds": [0, 1], "eval_steps": [100, 200]},
        }
    ]
    for (arm, seed), fids in fids_by_run.items():
        for step, fid in zip((100, 200), fids):
            out.append(
                dict(
                    image_size=16,
                    family="flow",
                    method=arm,
                    k=None,
                    seed=seed,
                    step=step,
                    sampling_steps=10,
                    fid=fid,
                    initial_noise="standard",
                    assignment_gain=0.0 if arm == "vanilla" else 0.03,
                )
            )
        if skew:
            for c in range(10):
                out.append(
                    dict(
                        kind="class_noise",
                        method=arm,
                        seed=seed,
                        **{"class": c},
                        count=100,
                        shift=1.6,
                        excess=0.1 if arm != "linear" else 1.0,
                        toward=0.0,
                        sq_norm=1.0,
                        batches=8,
                    )
                )
    return out


def test_completed_runs_need_the_final_step_and_the_skew():
    records = _records({("vanilla", 0): [20, 10], ("linear", 0): [15, 8]})
    assert bench.completed(records, [100, 200]) == {("vanilla", 0), ("linear", 0)}
    assert bench.completed(records, [100, 200, 400]) == set()
    assert (
        bench.completed(_records({("vanilla", 0): [20, 10]}, skew=False), [100, 200])
        == set()
    )


def test_report_counts_seeds_and_flags_an_incomplete_grid():
    records = _records(
        {
            ("vanilla", 0): [20.0, 10.0],
            ("linear", 0): [10.0, 8.0],
            ("per_class", 0): [12.0, 9.0],
            ("vanilla", 1): [20.0, 10.0],
            ("linear", 1): [10.0, 9.0],
        }
    )
    text = bench.markdown(records)
    assert (
        "vanilla: 2 seed(s) [0, 1], linear: 2 seed(s) [0, 1], per_class: 1 seed(s) [0]"
        in text
    )
    assert "**The grid is incomplete**: 1 of 6 runs missing (per_class seed 1)" in text
    # linear reaches vanilla's final 10 at step 100 in both seeds: ">" bounds of 2.
    assert "| linear | >2.00 [2.00, 2.00] (2/2 >)" in text
    assert "| per_class | 8.00 [8.00, 8.00] (1 seed) |" not in text
    assert "| linear | 2 | 3.00% | 8.50 [8.00, 9.00] |" in text
    complete = bench.markdown(records + _records({("per_class", 1): [11.0, 9.5]})[1:])
    assert "The grid is complete: 3 arms x 2 seeds." in complete
