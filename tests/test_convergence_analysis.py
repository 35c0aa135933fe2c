"""The convergence benchmark's speed-up arithmetic, on hand-made curves."""

import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import convergence_analysis as analysis  # noqa: E402


def records(curves, size=16, family="ddim", sampling=10):
    out = [{"header": True, "command": "x", "machine": "m", "date": "d"}]
    for (arm, seed), fids in curves.items():
        method, k = ("knn", int(arm[3:])) if arm.startswith("knn") else (arm, None)
        for step, fid in zip((100, 200, 300, 400), fids):
            out.append(
                dict(
                    image_size=size,
                    family=family,
                    method=method,
                    k=k,
                    seed=seed,
                    step=step,
                    sampling_steps=sampling,
                    fid=fid,
                    initial_noise="standard",
                    assignment_gain=0.0 if k is None and method == "vanilla" else 0.04,
                )
            )
    return out


def test_steps_to_reach_interpolates_in_log_fid():
    # From 40 at step 100 to 10 at step 200: log-linear, 20 is halfway.
    assert analysis.steps_to_reach([100, 200], [40.0, 10.0], 20.0) == (150.0, "")
    assert analysis.steps_to_reach([100, 200], [5.0, 4.0], 20.0) == (100.0, "<=")
    assert analysis.steps_to_reach([100, 200], [40.0, 30.0], 20.0) == (200.0, ">")


def test_speedup_per_seed_against_hand_computation():
    recs = records(
        {
            ("vanilla", 0): [80.0, 40.0, 20.0, 10.0],  # reaches its final 10 at 400
            ("linear", 0): [40.0, 10.0, 8.0, 7.0],  # reaches 10 at 200: 2x
            ("knn4", 0): [80.0, 40.0, 20.0, 15.0],  # never: censored at 400
            ("vanilla", 1): [80.0, 40.0, 20.0, 10.0],
            ("linear", 1): [80.0, 20.0, 12.0, 9.0],
        }
    )
    table = analysis.speedups(recs)
    linear = table[(16, "ddim", "linear", "standard", 10)]
    assert [r["seed"] for r in linear] == [0, 1]
    assert linear[0]["speedup"] == pytest.approx(2.0) and linear[0]["kind"] == ""
    # Seed 1: 12 at 300, 9 at 400; log-interpolated crossing of 10.
    frac = (math.log(12) - math.log(10)) / (math.log(12) - math.log(9))
    assert linear[1]["speedup"] == pytest.approx(400 / (300 + 100 * frac))
    assert linear[1]["final_ratio"] == pytest.approx(0.9)
    knn = table[(16, "ddim", "knn4", "standard", 10)][0]
    assert knn["kind"] == "<" and knn["speedup"] == pytest.approx(1.0)
    summary = analysis.summarize(linear)
    assert summary["median"] == pytest.approx((2.0 + 400 / (300 + 100 * frac)) / 2)
    assert summary["reaches_goal"] == 1 and summary["censored"] == 0


def test_runs_only_compare_matching_seeds_and_cells():
    recs = records({("vanilla", 0): [80, 40, 20, 10], ("linear", 1): [40, 10, 8, 7]})
    assert analysis.speedups(recs) == {}
    recs = records({("vanilla", 0): [80, 40, 20, 10]}, family="flow") + records(
        {("linear", 0): [40, 10, 8, 7]}, family="ddim"
    )
    assert analysis.speedups(recs) == {}


def test_mean_curves_are_geometric_means_over_seeds():
    recs = records({("vanilla", 0): [10, 10, 10, 10], ("vanilla", 1): [40, 40, 40, 40]})
    steps, mean, low, high, n = analysis.mean_curves(recs)[
        (16, "ddim", "vanilla", "standard", 10)
    ]
    assert n == 2 and list(steps) == [100, 200, 300, 400]
    assert (mean[0], low[0], high[0]) == pytest.approx((20.0, 10.0, 40.0))
