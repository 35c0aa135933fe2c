"""Analysis of the convergence records: curves, speed-ups, seed spread.

Speed-up. For a training seed s, vanilla's final quality F_s is its FID at
its last evaluation step (the geometric mean of the last `final_window`
evaluations), and the target is T_s = (1 + tolerance) F_s. The steps a curve
needs to reach T_s are found on the raw FID curve: the first evaluation at
or below T_s, interpolated linearly in log(FID) between it and the
evaluation before it. Then

    speed-up_s = steps vanilla needs / steps the arm needs

for the arm's run of the same seed (same initial weights, same batches).
Both are censored where a curve is already below the target at its first
evaluation ("<=" that step) or never reaches it (the arm's speed-up is then
an upper bound, "<"). Seeds are summarised by the median and the range; the
goal of immiscible training ("vanilla's final FID in half the steps") is a
speed-up of at least 2.
"""

import math

import numpy as np

GOAL = 2.0


def data_records(records):
    return [r for r in records if not r.get("header")]


def headers(records):
    return [r for r in records if r.get("header")]


def arm_label(record):
    return f"knn{record['k']}" if record["method"] == "knn" else record["method"]


def curves(records):
    """{(size, family, arm, initial_noise, sampling_steps, seed): (steps, fids)}."""
    grouped = {}
    for r in data_records(records):
        key = (
            r["image_size"],
            r["family"],
            arm_label(r),
            r.get("initial_noise", "standard"),
            r["sampling_steps"],
            r["seed"],
        )
        grouped.setdefault(key, {})[r["step"]] = r["fid"]
    out = {}
    for key, by_step in grouped.items():
        steps = np.array(sorted(by_step), dtype="float64")
        out[key] = (
            steps,
            np.array([by_step[s] for s in sorted(by_step)], dtype="float64"),
        )
    return out


def final_quality(fids, window=1):
    tail = np.asarray(fids, dtype="float64")[-window:]
    return float(np.exp(np.mean(np.log(tail))))


def steps_to_reach(steps, fids, target):
    """(steps, kind): kind "" (reached between two evaluations), "<=" (at
    or before the first evaluation) or ">" (not reached: the last step)."""
    logs = np.log(np.asarray(fids, dtype="float64"))
    log_target = math.log(target)
    for i, value in enumerate(logs):
        if value <= log_target:
            if i == 0:
                return float(steps[0]), "<="
            frac = (logs[i - 1] - log_target) / (logs[i - 1] - value)
            return float(steps[i - 1] + frac * (steps[i] - steps[i - 1])), ""
    return float(steps[-1]), ">"


def ratio(vanilla, arm):
    """speed-up = vanilla steps / arm steps and its kind: "" exact, "<" an
    upper bound (the arm did not reach the target, or vanilla reached it at
    its first evaluation), ">" a lower bound (the arm reached it at its
    first evaluation), "?" unbounded."""
    (v, vk), (a, ak) = vanilla, arm
    upper = ak == ">" or vk == "<="
    lower = ak == "<="
    kind = "?" if upper and lower else "<" if upper else ">" if lower else ""
    return v / a, kind


def speedups(records, tolerance=0.0, final_window=1):
    """Per cell (size, family, arm, initial_noise, sampling_steps): a list of
    per-seed dicts {seed, speedup, kind, vanilla_steps, arm_steps,
    final_ratio} where final_ratio = arm's final FID / vanilla's."""
    data = curves(records)
    out = {}
    for key, (steps, fids) in data.items():
        size, family, arm, noise, sampling, seed = key
        if arm == "vanilla":
            continue
        vanilla = data.get((size, family, "vanilla", "standard", sampling, seed))
        if (
            vanilla is None
            or len(vanilla[0]) != len(steps)
            or np.any(vanilla[0] != steps)
        ):
            continue
        final = final_quality(vanilla[1], final_window)
        target = (1.0 + tolerance) * final
        v_reach = steps_to_reach(vanilla[0], vanilla[1], target)
        a_reach = steps_to_reach(steps, fids, target)
        value, kind = ratio(v_reach, a_reach)
        out.setdefault((size, family, arm, noise, sampling), []).append(
            {
                "seed": seed,
                "speedup": value,
                "kind": kind,
                "vanilla_steps": v_reach[0],
                "arm_steps": a_reach[0],
                "arm_reached": a_reach[1] != ">",
                "final_ratio": final_quality(fids, final_window) / final,
            }
        )
    for rows in out.values():
        rows.sort(key=lambda row: row["seed"])
    return out


def summarize(rows):
    """Median and range of the speed-ups over seeds, and how many seeds are
    censored; the median of the final-FID ratios."""
    values = np.array([r["speedup"] for r in rows])
    return {
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
        "seeds": len(rows),
        "censored": sum(1 for r in rows if r["kind"]),
        "kinds": "".join(sorted({r["kind"] for r in rows if r["kind"]})),
        "final_ratio": float(np.median([r["final_ratio"] for r in rows])),
        "final_ratio_min": float(min(r["final_ratio"] for r in rows)),
        "final_ratio_max": float(max(r["final_ratio"] for r in rows)),
        "reaches_goal": int(
            sum(1 for r in rows if r["speedup"] >= GOAL and r["kind"] in ("", ">"))
        ),
    }


def assignment_gains(records):
    """Mean assignment gain of each (size, family, arm) over its runs' last
    evaluation step."""
    last = {}
    for r in data_records(records):
        key = (r["image_size"], r["family"], arm_label(r), r["seed"])
        if key not in last or r["step"] > last[key]["step"]:
            last[key] = r
    gains = {}
    for (size, family, arm, _), r in last.items():
        gains.setdefault((size, family, arm), []).append(
            r.get("assignment_gain") or 0.0
        )
    return {key: float(np.mean(v)) for key, v in gains.items()}


def mean_curves(records):
    """{(size, family, arm, noise, sampling): (steps, geo-mean, min, max, seeds)}
    over the seeds whose evaluation steps agree."""
    grouped = {}
    for key, (steps, fids) in curves(records).items():
        grouped.setdefault(key[:5], []).append((steps, fids))
    out = {}
    for key, runs in grouped.items():
        steps = runs[0][0]
        runs = [f for s, f in runs if len(s) == len(steps) and np.all(s == steps)]
        stack = np.log(np.stack(runs))
        out[key] = (
            steps,
            np.exp(stack.mean(0)),
            np.exp(stack.min(0)),
            np.exp(stack.max(0)),
            len(runs),
        )
    return out
