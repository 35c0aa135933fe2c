"""Training-step overhead of noise assignment: vanilla vs each assigner.

Same network (`keras_immiscible.layers.UNet(image_shape=(32, 32, 3))`, its
default widths unless `--widths`/`--block-depth` say otherwise), same initial
weights, same batches, same backend, same run.
Arms:
- `vanilla`: plain noise (`assignment=None`);
- `knn`: `KNNSelection(k=8)` in the step;
- `linear_auction`: `LinearAssignment(solver="auction")` in the step (XLA);
- `linear_scipy`: `LinearAssignment(solver="scipy")` in the step, through
  the backend's host callback (on TensorFlow the model then compiles the
  step without XLA, see `ImmiscibleModel.compile`);
- `pipelined`: the model with `assignment=None` trained on
  `keras_immiscible.data.with_assigned_noise(dataset, "linear")`: the exact
  scipy assignment runs in the input pipeline, a batch ahead of the step.

Every arm is compiled first (a short warm-up `fit`), then the arms take turns
(round robin, the order rotating every round) running `fit` for
`--steps` steps. The time of a round is measured from the end of its first
step (which also starts the input pipeline) to the end of `fit`, divided by
`--steps - 1`: the steady-state time per step. Each arm's median over the
rounds is compared with vanilla's (`ratio`). Each backend runs in its own
subprocess. Data: scikit-learn digits upsampled to 32x32x3 in [0, 1].

    python benchmarks/step_overhead.py                      # B = 64,128,256
    python benchmarks/step_overhead.py --batch-sizes 128 --backends jax \
        --rounds 3 --steps 3 --append                       # add to the file
    python benchmarks/step_overhead.py --batch-sizes 256,512 --steps 6 \
        --widths 16,32 --block-depth 1 --name step_overhead_small_unet
        # a step small enough for the scipy solve to show (and to hide)

Writes `docs/benchmarks/step_overhead.{json,md}`.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

ARMS = ("vanilla", "knn", "linear_auction", "linear_scipy", "pipelined")
LABELS = {
    "vanilla": "vanilla (no assignment)",
    "knn": "KNNSelection(k=8), in the step",
    "linear_auction": "LinearAssignment(auction), in the step",
    "linear_scipy": "LinearAssignment(scipy), in the step (host callback)",
    "pipelined": "LinearAssignment(scipy), pipelined (with_assigned_noise)",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="64,128,256")
    parser.add_argument("--backends", default="jax,tensorflow")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--rounds", type=int, default=5, help="timed fit calls per arm")
    parser.add_argument(
        "--steps",
        type=int,
        default=3,
        help="steps per fit call (the first is not timed)",
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--widths", default=None, help="UNet widths, e.g. 16,32 (default: UNet's)"
    )
    parser.add_argument(
        "--block-depth",
        type=int,
        default=None,
        help="UNet block depth (default: UNet's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="docs/benchmarks")
    parser.add_argument("--name", default="step_overhead")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add this run's records to an existing JSON",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.backends = [b for b in args.backends.split(",") if b]
    args.arms = [a for a in args.arms.split(",") if a]
    if args.widths is not None:
        args.widths = tuple(int(w) for w in args.widths.split(","))
    for arm in args.arms:
        if arm not in ARMS:
            parser.error(f"unknown arm {arm!r}; known: {list(ARMS)}")
    if "vanilla" not in args.arms:
        args.arms.insert(0, "vanilla")
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is not timed)")
    return args


def make_images(num, size, seed):
    """Digits in [0, 1], nearest-upsampled to (size, size, 3)."""
    import numpy as np

    from keras_immiscible.data import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    picked = digits[rng.choice(len(digits), num, replace=num > len(digits))]
    factor = -(-size // 8)
    images = picked.repeat(factor, axis=1).repeat(factor, axis=2)
    return np.repeat(images[:, :size, :size], 3, axis=3).astype("float32")


def network_kwargs(args):
    """The UNet arguments that differ from its defaults."""
    kwargs = {}
    if args.widths is not None:
        kwargs["widths"] = args.widths
    if args.block_depth is not None:
        kwargs["block_depth"] = args.block_depth
    return kwargs


def describe_network(record):
    kwargs = record.get("network") or {}
    if not kwargs:
        return "default"
    return ", ".join(
        f"{k}={tuple(v) if isinstance(v, list) else v}"
        for k, v in sorted(kwargs.items())
    )


def worker(args):
    import warnings

    import keras
    import tensorflow as tf

    import keras_immiscible as ki

    backend = keras.backend.backend()
    tf.get_logger().setLevel("ERROR")
    # Expected and said once here: on TensorFlow the in-step scipy arm
    # compiles without XLA.
    warnings.filterwarnings("ignore", message=".*solves the assignment on the host.*")
    shape = (args.image_size, args.image_size, 3)

    class StepClock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                # Reading a value waits for the step (JAX dispatches
                # asynchronously), so the clock starts after step 1.
                float((logs or {}).get("loss", 0.0))
                self.first = time.perf_counter()
                self.cpu_first = time.process_time()

    for batch in args.batch_sizes:
        images = make_images(batch * args.steps, args.image_size, args.seed)
        base = (
            tf.data.Dataset.from_tensor_slices(images)
            .batch(batch, drop_remainder=True)
            .repeat()
        )
        models, data = {}, {}
        for arm in args.arms:
            keras.utils.set_random_seed(args.seed)
            net = ki.layers.UNet(image_shape=shape, **network_kwargs(args))
            assignment = {
                "vanilla": None,
                "knn": ki.assignment.KNNSelection(k=8),
                "linear_auction": ki.assignment.LinearAssignment("auction"),
                "linear_scipy": ki.assignment.LinearAssignment("scipy"),
                "pipelined": None,
            }[arm]
            model = ki.ImmiscibleDiffusion(net, assignment=assignment, seed=args.seed)
            model.compile(optimizer=keras.optimizers.AdamW(1e-4))
            if arm == "pipelined":
                data[arm] = ki.data.with_assigned_noise(base, "linear", seed=args.seed)
            else:
                data[arm] = base.prefetch(tf.data.AUTOTUNE)
            start = time.perf_counter()
            model.fit(data[arm], steps_per_epoch=2, epochs=1, verbose=0)
            print(
                f"B={batch} {arm}: compiled and warmed up in "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
            models[arm] = model

        times = {arm: [] for arm in args.arms}
        cpu = {arm: [] for arm in args.arms}
        for r in range(args.rounds):
            shift = r % len(args.arms)
            for arm in args.arms[shift:] + args.arms[:shift]:
                clock = StepClock()
                models[arm].fit(
                    data[arm],
                    steps_per_epoch=args.steps,
                    epochs=1,
                    verbose=0,
                    callbacks=[clock],
                )
                elapsed = time.perf_counter() - clock.first
                cpu_used = time.process_time() - clock.cpu_first
                times[arm].append(1000.0 * elapsed / (args.steps - 1))
                cpu[arm].append(1000.0 * cpu_used / (args.steps - 1))
            print(
                f"B={batch} round {r + 1}: "
                + ", ".join(f"{arm} {times[arm][-1]:.0f} ms" for arm in args.arms),
                flush=True,
            )
        vanilla = _common.median(times["vanilla"])
        for arm in args.arms:
            median = _common.median(times[arm])
            _common.emit(
                {
                    "method": arm,
                    "label": LABELS[arm],
                    "backend": backend,
                    "batch_size": batch,
                    "image_shape": list(shape),
                    "network": {
                        k: list(v) if isinstance(v, tuple) else v
                        for k, v in network_kwargs(args).items()
                    },
                    "median_ms": median,
                    "ratio": median / vanilla,
                    # Two estimates less sensitive to the shared machine's load:
                    # the fastest rounds (least disturbed), and the median of
                    # the ratios within each round (arms run back to back).
                    "min_ms": min(times[arm]),
                    "ratio_min": min(times[arm]) / min(times["vanilla"]),
                    "ratio_paired": _common.median(
                        [t / v for t, v in zip(times[arm], times["vanilla"])]
                    ),
                    "round_ms": times[arm],
                    # CPU time of the whole process (all threads, the input
                    # pipeline's included) per step: the work an arm adds, far
                    # less sensitive to other processes than the wall clock.
                    "cpu_ms": _common.median(cpu[arm]),
                    "cpu_ratio": _common.median(cpu[arm])
                    / _common.median(cpu["vanilla"]),
                    "cpu_round_ms": cpu[arm],
                    "timed_steps": args.rounds * (args.steps - 1),
                    "jit_compile": bool(models[arm].jit_compile),
                }
            )


def write_table(path, records):
    headers, timed, run = [], [], 0
    for r in records:
        if r.get("header"):
            headers.append(r)
            run = len(headers)
        elif "median_ms" in r:
            timed.append(dict(r, run=run))
    lines = [
        "# Training-step overhead of noise assignment",
        "",
        "Steady-state median milliseconds per training step (32x32x3 images,"
        " `UNet` with its default widths unless the `UNet` column says"
        " otherwise), and the ratio to vanilla measured in the same run"
        " (same backend, same batches; arms interleaved, their order"
        " rotating every round). `spread`: the fastest and slowest round of"
        " the arm. Whole rounds can run slower for reasons outside the"
        " process (other processes' load; on the 2-core machine below, even"
        " when quiet, some rounds took 1.9-2.5x as long with unchanged CPU"
        " time, vanilla's as well), so besides the ratio of medians the table"
        " gives the ratio of the fastest rounds (the least disturbed) and"
        " the median over rounds of the ratio within a round; `CPU ms`: the"
        " process's CPU time per step (all threads, the input pipeline's"
        " included), i.e. the work an arm adds whether or not it overlaps"
        " the step. `XLA`: whether"
        " Keras compiled the step with XLA (Keras' `jit_compile='auto'`"
        " turns XLA off for TensorFlow on a CPU-only machine).",
        "",
        "Runs:",
        "",
    ]
    for run, h in enumerate(headers, 1):
        lines.append(f"{run}. `{h['command']}`: {h['machine']}, {h['date']}")
    lines.append("")
    lines.append(
        "| run | backend | UNet | B | arm | XLA | ms / step (median) | spread | ratio "
        "(medians) | ratio (fastest rounds) | ratio (paired, median) | "
        "CPU ms / step | CPU-time ratio |"
    )
    lines.append("|---" * 13 + "|")
    for r in sorted(
        timed,
        key=lambda r: (
            r["backend"],
            describe_network(r),
            r["batch_size"],
            r["run"],
            ARMS.index(r["method"]),
        ),
    ):
        spread = (
            f"{_common.fmt_ms(min(r['round_ms']))}-{_common.fmt_ms(max(r['round_ms']))}"
        )
        extra = [r.get("ratio_min"), r.get("ratio_paired")]
        extra = " | ".join("-" if v is None else f"{v:.3f}" for v in extra)
        extra += " | " + (_common.fmt_ms(r["cpu_ms"]) if "cpu_ms" in r else "-")
        extra += " | " + (f"{r['cpu_ratio']:.3f}" if "cpu_ratio" in r else "-")
        lines.append(
            f"| {r['run']} | {r['backend']} | {describe_network(r)} | "
            f"{r['batch_size']} | "
            f"{LABELS[r['method']]} | "
            f"{'yes' if r['jit_compile'] else 'no'} | "
            f"{_common.fmt_ms(r['median_ms'])} | {spread} | "
            f"{r['ratio']:.3f} | {extra} |"
        )
    errors = [r for r in records if "error" in r]
    for r in errors:
        lines.append(f"\nError [{r.get('backend')}]: {r['error']}")
    lines += [
        "",
        "Target (issue 5): ratio <= 1.05 at B=128 for knn, the "
        "auction and the pipelined host path.",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    out = os.path.join(args.output_dir, args.name)
    records = _common.read_json(out + ".json") if args.append else []
    records.append(
        _common.header(
            "step_overhead",
            versions=_common.versions(),
            data_description="scikit-learn digits upsampled to "
            f"{args.image_size}x{args.image_size}x3, float32 in [0, 1]",
        )
    )
    worker_args = list(argv if argv is not None else sys.argv[1:])
    worker_args = [a for a in worker_args if a != "--append"]
    for backend in args.backends:
        records += _common.run_worker(
            os.path.abspath(__file__), backend, worker_args + ["--worker"]
        )
        _common.write_json(out + ".json", records)
        write_table(out + ".md", records)
    print(f"wrote {out}.json, {out}.md")


if __name__ == "__main__":
    main()
