"""Convergence in the papers' regime: does immiscible training reach
vanilla's quality in fewer steps?

Trains the digits at 16x16 and 32x32 (nearest upsampling of the bundled
8x8 digits; the 8x8 grid is kept as the out-of-regime reference) with two
families, DDIM (epsilon target, cosine schedule, DDIM eta = 0) and flow
matching (straight path, Euler), and the arms vanilla, linear (exact scipy
assignment) and KNN (k = 4; a k = 2, 4, 8 sweep at 16x16), for several
training seeds. A seed gives every arm the same initial weights and the
same batches. At every evaluation the EMA weights (`ki.optimizers.AdamW`,
momentum 0.99, warm-up 10) generate the same number of samples from the
same sampling seed at 5, 10, 20 and 50 sampler steps, scored by FID in the
digits-classifier feature space (samples block-averaged back to 8x8). KNN
arms are also sampled from the Gaussian matched to the noise they trained
on (`initial_noise="matched"`).

    python benchmarks/convergence.py                      # the whole grid
    python benchmarks/convergence.py --sizes 16 --families ddim --append
    python benchmarks/convergence.py --quick              # smoke test, minutes
    python benchmarks/convergence.py --report             # tables and plots only

Runs can be split over processes and sessions: `--sizes`, `--families`,
`--arms`, `--seeds` select part of the grid; `--append` adds to the records
file and skips the runs already complete there (several processes may
append to one file). `--report` rebuilds the tables and plots from the
records (`benchmarks/convergence_report.py`; the speed-up is defined in
`benchmarks/convergence_analysis.py`).

Outputs (in --output, default docs/benchmarks):
    convergence_regime.json   flat records: header records (command, machine,
                              date, configuration), then one per (image
                              size, family, arm, seed, step, sampler steps,
                              initial noise) with fid and assignment_gain.
    convergence_regime.md     speed-up and FID tables.
    convergence_regime_*.png  FID curves per image size and family, and the
                              speed-up against the assignment gain.

Backend: TensorFlow by default (the fastest on this CPU for these
networks); on TensorFlow the linear arm's step runs without XLA (the scipy
solve is a host call): that changes its speed, not its math.
"""

import argparse
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import convergence_run as run_lib  # noqa: E402

DEFAULTS = dict(
    seeds="0,1,2",
    steps="8:800,16:800,32:800",
    eval_every="100@400,200",
    num_samples=256,
    sampling_steps="5,10,20,50",
)
QUICK = dict(
    seeds="1",
    steps="8:40,16:40,32:40",
    eval_every="20",
    num_samples=64,
    sampling_steps="5,10",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help="image sizes among 8, 16, 32 (default: all of the grid).",
    )
    parser.add_argument("--families", default=None, help="ddim, flow (default: both).")
    parser.add_argument(
        "--arms",
        default=None,
        help=f"arms among {', '.join(run_lib.ARM_NAMES)} (default: those of the grid: "
        "vanilla, linear, knn4 at every size, knn2 and knn8 at 16).",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help=f"a count N or a comma list (default: {DEFAULTS['seeds']}).",
    )
    parser.add_argument(
        "--steps",
        default=None,
        help=f"training steps per image size, 'S:N,...' or one N (default: {DEFAULTS['steps']}).",
    )
    parser.add_argument(
        "--eval-every",
        default=None,
        help="evaluation interval: N, or 'N1@S1,N2@S2,N3' (every N1 steps up to "
        f"S1, ...). Default: {DEFAULTS['eval_every']}.",
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help=f"samples per evaluation (default: {DEFAULTS['num_samples']}).",
    )
    parser.add_argument(
        "--sampling-steps",
        default=None,
        help=f"sampler step counts of every evaluation (default: {DEFAULTS['sampling_steps']}).",
    )
    parser.add_argument(
        "--sampling-seed",
        type=int,
        default=1234,
        help="seed of the evaluation samples (default: 1234).",
    )
    parser.add_argument(
        "--batch-size", type=int, default=128, help="batch size (default: 128)."
    )
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)."
    )
    parser.add_argument(
        "--ema-momentum", type=float, default=0.99, help="EMA momentum (default: 0.99)."
    )
    parser.add_argument(
        "--ema-warmup",
        type=float,
        default=10.0,
        help="EMA warm-up constant (default: 10).",
    )
    parser.add_argument(
        "--no-matched",
        dest="matched",
        action="store_false",
        help="do not also sample KNN arms from the matched Gaussian.",
    )
    parser.add_argument(
        "--backend",
        default=None,
        choices=("tensorflow", "jax", "torch"),
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="TensorFlow intra- and inter-op threads (default: TensorFlow's choice).",
    )
    parser.add_argument(
        "--output",
        default=os.path.join("docs", "benchmarks"),
        help="output folder (default: docs/benchmarks).",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="file stem (default: convergence_regime, convergence_quick with --quick).",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add to an existing records file, skipping complete runs.",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="do not train: rebuild the tables and plots.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test of a few minutes."
    )
    args = parser.parse_args(argv)
    resolve(args)
    return args


def _ints(text, name, minimum=1):
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"`--{name}` must be a comma list of ints, got {text!r}."
        ) from None
    if not values or len(set(values)) != len(values) or min(values) < minimum:
        raise ValueError(
            f"`--{name}` must list distinct ints >= {minimum}, got {text!r}."
        )
    return values


def eval_schedule(spec, total):
    """Evaluation steps from "N" or "N1@S1,N2@S2,...,Nk"; the last step is
    always included.

    >>> eval_schedule("100@400,200", 800)
    [100, 200, 300, 400, 600, 800]
    """
    steps, start = [], 0
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    for i, part in enumerate(parts):
        every, _, until = part.partition("@")
        every = int(every)
        until = int(until) if until else total
        if every < 1 or (not _ and i != len(parts) - 1):
            raise ValueError(f"bad `--eval-every` {spec!r}.")
        step = start + every
        while step <= min(until, total):
            steps.append(step)
            step += every
        start = min(until, total)
    if not steps or steps[-1] != total:
        steps.append(total)
    return sorted(set(steps))


def resolve(args):
    table = dict(DEFAULTS, **(QUICK if args.quick else {}))
    for key, value in table.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.name = args.name or (
        "convergence_quick" if args.quick else "convergence_regime"
    )
    args.backend = args.backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    text = str(args.seeds)
    args.seeds = (
        list(range(_ints(text, "seeds")[0]))
        if "," not in text
        else _ints(text, "seeds", minimum=0)
    )
    args.sampling_steps = _ints(args.sampling_steps, "sampling-steps")
    steps = {}
    for part in str(args.steps).split(","):
        size, _, count = part.rpartition(":")
        sizes = [int(size)] if size else list(run_lib.SIZES)
        for s in sizes:
            steps[s] = int(count)
    args.steps = steps
    args.eval_steps = {s: eval_schedule(args.eval_every, n) for s, n in steps.items()}
    sizes = _ints(args.sizes, "sizes") if args.sizes else list(run_lib.SIZES)
    families = (
        [f.strip() for f in args.families.split(",")]
        if args.families
        else list(run_lib.FAMILIES)
    )
    arms = [a.strip() for a in args.arms.split(",")] if args.arms else None
    for size in sizes:
        if size not in run_lib.SIZES:
            raise ValueError(f"`--sizes`: {size} is not one of {run_lib.SIZES}.")
    for family in families:
        if family not in run_lib.FAMILIES:
            raise ValueError(
                f"`--families`: {family!r} is not one of {run_lib.FAMILIES}."
            )
    for arm in arms or []:
        if arm not in run_lib.ARM_NAMES:
            raise ValueError(f"`--arms`: {arm!r} is not one of {run_lib.ARM_NAMES}.")
    grid = run_lib.DEFAULT_GRID
    if arms is not None:
        # Explicit arms: every selected size and family gets them.
        grid = [
            (s, f, a) for s in run_lib.SIZES for f in run_lib.FAMILIES for a in arms
        ]
    args.cells = [c for c in grid if c[0] in sizes and c[1] in families]
    if args.num_samples < 1 or args.batch_size < 1:
        raise ValueError("`--num-samples` and `--batch-size` must be >= 1.")
    return args


def configure_backend(args):
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    if keras.backend.backend() != args.backend:
        raise RuntimeError(
            f"Keras was imported with backend {keras.backend.backend()!r}."
        )
    if args.threads and args.backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    return keras


def main(argv=None):
    args = parse_args(argv)
    path = os.path.join(args.output, args.name + ".json")
    records_file = run_lib.RecordsFile(path)
    if args.report:
        import convergence_report

        convergence_report.write(records_file.read(), args.output, args.name)
        return
    existing = records_file.read()
    if existing and not args.append:
        raise SystemExit(f"{path} exists: pass --append to add to it, or remove it.")
    done = run_lib.completed_runs(existing, args.eval_steps)
    keras = configure_backend(args)
    args.invocation = 1 + sum(1 for r in existing if r.get("header"))
    header = _common.header(
        "benchmarks/convergence.py",
        invocation=args.invocation,
        keras_version=keras.__version__,
        versions=_common.versions(),
        config={
            "backend": args.backend,
            "cells": args.cells,
            "seeds": args.seeds,
            "steps": args.steps,
            "eval_steps": args.eval_steps,
            "batch_size": args.batch_size,
            "optimizer": f"ki.optimizers.AdamW(learning_rate={args.lr}), Keras defaults otherwise",
            "ema": f"momentum {args.ema_momentum}, warm-up {args.ema_warmup}",
            "networks": {s: f"UNet({n})" for s, n in run_lib.NETWORKS.items()},
            "families": {
                "ddim": "ImmiscibleDiffusion: epsilon target, CosineSchedule, DDIM eta=0",
                "flow": "ImmiscibleFlowMatching: straight path, uniform times, Euler",
            },
            "linear_solver": "scipy",
            "num_samples": args.num_samples,
            "sampling_steps": args.sampling_steps,
            "sampling_seed": args.sampling_seed,
            "matched": args.matched,
            "metric": "FID, digits-classifier features (64-d) after a block average to 8x8, "
            "against the 360 test images",
            "threads": args.threads,
        },
    )
    records_file.append([header])
    todo = [
        (size, family, arm, seed)
        for size, family, arm in args.cells
        for seed in args.seeds
        if (size, family, arm, seed) not in done
    ]
    # Seeds inside cells' groups: for each (size, family), seed by seed,
    # every arm in turn, so a partial grid holds complete seed pairs.
    todo.sort(
        key=lambda r: (
            [c[:2] for c in args.cells].index(r[:2]),
            r[2] not in ("vanilla", "linear", "knn4"),
            r[3],
            [c[2] for c in args.cells if c[:2] == r[:2]].index(r[2]),
        )
    )
    print(
        f"{len(todo)} runs to do ({len(done)} already complete) -> {path}", flush=True
    )
    pool = run_lib.ModelPool(args)
    data, evaluators = {}, {}
    for size, family, arm, seed in todo:
        if size not in data:
            data[size] = run_lib.load_data(size)
            evaluators[size] = run_lib.Evaluator(data[size][1], size, args)
        start = time.perf_counter()
        records = run_lib.run_one(
            size,
            family,
            arm,
            seed,
            args,
            data[size],
            evaluators[size],
            pool,
            lambda m: print(m, flush=True),
        )
        records_file.append(records)
        print(
            f"{size}px {family} {arm} seed {seed} done in {time.perf_counter() - start:.0f} s "
            f"({datetime.datetime.now():%H:%M})",
            flush=True,
        )


if __name__ == "__main__":
    main()
