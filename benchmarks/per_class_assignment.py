"""Per-class linear assignment on class-conditional digits (16x16, flow matching).

A global linear assignment pairs a batch's images with its noise across
classes, so the noise a class trains on is no longer its own i.i.d. draw:
every class's noise prior is pulled towards its images (arXiv 2503.10636).
`LinearAssignment(per_class=True)` assigns within each class of the batch
instead. This benchmark trains a class-conditional UNet
(`ki.layers.UNet(num_classes=10)`) with `ki.ImmiscibleFlowMatching` (straight
path, Euler sampler: the family where immiscible training helped at 16x16,
`docs/benchmarks/convergence_regime.md`) on `(images, labels)` with three
arms:

    vanilla    assignment=None
    linear     LinearAssignment(solver="scipy"): one solve over the batch
    per_class  LinearAssignment(solver="scipy", per_class=True)

The configuration is the convergence benchmark's at 16x16
(`benchmarks/convergence_run.py`): UNet widths (16, 32), block depth 1,
`ki.optimizers.AdamW` lr 1e-3 with EMA 0.99 (warm-up 10), batch 128, 800
steps, evaluations at 100, 200, 300, 400, 600, 800. For a training seed every
arm starts from the same initial weights and sees the same batches, in the
same order. At each evaluation the EMA weights generate `--num-samples`
images at 5, 10, 20 and 50 Euler steps, conditional on labels drawn uniformly
from 0-9 (the same labels and the same sampling seed for every arm and seed);
FID against the whole digits test split (360 images) in the
digits-classifier feature space after a block average to 8x8 (the
convergence benchmark's `Evaluator`).

The class-prior skew. For each (arm, seed) the arm's assigner is applied to
the seed's training batches (the same batches as training, `--skew-batches`
of them, with a numpy noise draw that depends on the seed only, so every arm
assigns the same draws); per class c, over all the noise assigned to
class-c images:

    shift_c   ||mean_c(noise)||, the L2 norm over the 256 pixels of the
              class's mean noise. For i.i.d. N(0, I) noise it is about
              sqrt(256 / n_c), sampling error only.
    excess_c  sqrt(max(shift_c^2 - 256 / n_c, 0)): the shift with the
              sampling error's expected share taken out.
    toward_c  <mean_c(noise), u_c>, u_c the unit vector from the mean
              training image to the mean class-c image (images in [-1, 1]):
              how far the class's noise mean moved towards its own images
              (i.i.d. noise: about N(0, 1 / n_c)).
    sq_c      mean ||noise||^2 / 256 over the class (1 for N(0, I)).

Per-class assignment permutes each class's own draws, so its per-class
means are exactly vanilla's (same draws); the global assignment's are not.
The statistics depend on the assigner and the data only, not on the model.

    python benchmarks/per_class_assignment.py --append --threads 1   # the grid
    python benchmarks/per_class_assignment.py --quick                 # smoke test
    python benchmarks/per_class_assignment.py --report                # tables only

`--append` adds to the records file and skips the (arm, seed) runs already
complete there; `--seeds`, `--arms` select part of the grid, `--steps` sets
the training steps. Outputs (in --output, default docs/benchmarks; --quick
writes to a fresh temporary folder):

    per_class_assignment.json  flat records: header records (command,
                               machine, date, configuration), one record per
                               (arm, seed, evaluation step, sampler steps)
                               with fid and assignment_gain, and one
                               "class_noise" record per (arm, seed, class)
                               with the skew statistics.
    per_class_assignment.md    final FID and speed-up tables, FID curves,
                               the skew table (`--report`, and after every
                               training invocation).

Speed-ups are the convergence benchmark's (`benchmarks/convergence_analysis.py`:
training steps vanilla needs to reach its own final FID / steps the arm
needs, per seed).
"""

import argparse
import datetime
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import convergence  # noqa: E402
import convergence_analysis as analysis  # noqa: E402
import convergence_run as run_lib  # noqa: E402

IMAGE_SIZE = 16
FAMILY = "flow"
NUM_CLASSES = 10
ARMS = ("vanilla", "linear", "per_class")
STEM = "per_class_assignment"

DEFAULTS = dict(
    seeds="0,1,2",
    steps=800,
    eval_every="100@400,200",
    num_samples=256,
    sampling_steps="5,10,20,50",
    skew_batches=None,  # every training batch
)
QUICK = dict(
    seeds="1",  # a count: seed 0
    steps=20,
    eval_every="10",
    num_samples=32,
    sampling_steps="2,5",
    skew_batches=10,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--arms", default=None, help=f"arms among {', '.join(ARMS)} (default: all)."
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help=f"a count N or a comma list (default: {DEFAULTS['seeds']}).",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps (default: {DEFAULTS['steps']}).",
    )
    parser.add_argument(
        "--eval-every",
        default=None,
        help=f"evaluation interval, N or 'N1@S1,N2' (default: {DEFAULTS['eval_every']}).",
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
        help=f"Euler step counts of every evaluation (default: {DEFAULTS['sampling_steps']}).",
    )
    parser.add_argument(
        "--sampling-seed",
        type=int,
        default=1234,
        help="seed of the evaluation noise and labels (default: 1234).",
    )
    parser.add_argument(
        "--skew-batches",
        type=int,
        default=None,
        help="training batches the class-prior skew is measured on (default: all of them).",
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
        default=None,
        help="output folder (default: docs/benchmarks; --quick: a new temporary folder).",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add to an existing records file, skipping complete runs.",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="do not train: rebuild the report from the records.",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny smoke test.")
    args = parser.parse_args(argv)
    return resolve(args)


def resolve(args):
    table = dict(DEFAULTS, **(QUICK if args.quick else {}))
    for key, value in table.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.output is None:
        args.output = (
            tempfile.mkdtemp(prefix="per_class_quick_")
            if args.quick
            else os.path.join("docs", "benchmarks")
        )
    args.backend = args.backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    text = str(args.seeds)
    args.seeds = (
        list(range(convergence._ints(text, "seeds")[0]))
        if "," not in text
        else convergence._ints(text, "seeds", minimum=0)
    )
    args.sampling_steps = convergence._ints(args.sampling_steps, "sampling-steps")
    if args.steps < 1:
        raise ValueError(f"`--steps` must be >= 1, got {args.steps}.")
    args.eval_steps = convergence.eval_schedule(args.eval_every, args.steps)
    args.arms = (
        [a.strip() for a in args.arms.split(",") if a.strip()]
        if args.arms
        else list(ARMS)
    )
    for arm in args.arms:
        if arm not in ARMS:
            raise ValueError(f"`--arms`: {arm!r} is not one of {ARMS}.")
    if args.skew_batches is None:
        args.skew_batches = args.steps
    if args.num_samples < 1 or args.batch_size < 1 or args.skew_batches < 1:
        raise ValueError(
            "`--num-samples`, `--batch-size` and `--skew-batches` must be >= 1."
        )
    return args


# ------------------------------------------------------------------ runs


def make_assigner(arm):
    import keras_immiscible as ki

    if arm == "vanilla":
        return None
    return ki.assignment.LinearAssignment(solver="scipy", per_class=arm == "per_class")


def make_model(arm, seed):
    """An uncompiled class-conditional flow-matching model whose initial
    weights and noise seed depend on `seed` only (the same for every arm)."""
    import keras

    import keras_immiscible as ki

    keras.utils.set_random_seed(seed)
    network = ki.layers.UNet(
        image_shape=(IMAGE_SIZE, IMAGE_SIZE, 1),
        num_classes=NUM_CLASSES,
        **run_lib.NETWORKS[IMAGE_SIZE],
    )
    return ki.ImmiscibleFlowMatching(network, assignment=make_assigner(arm), seed=seed)


class ModelPool:
    """One compiled model per arm, reset to a fresh seed's state for each
    run (the scheme of `convergence_run.ModelPool`, whose models are
    unconditional): the training step and the sampler compile once per arm.
    """

    def __init__(self, args):
        self.args = args
        self.models = {}

    def get(self, arm, seed):
        import warnings

        import keras

        if arm not in self.models:
            model = make_model(arm, seed)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*on the host.*")
                model.compile(
                    optimizer=run_lib.make_optimizer(
                        self.args.lr, self.args.ema_momentum, self.args.ema_warmup
                    )
                )
            model.optimizer.build(model.trainable_variables)
            snapshot = [keras.ops.copy(v.value) for v in model.optimizer.variables]
            self.models[arm] = (model, snapshot)
            return model
        model, snapshot = self.models[arm]
        fresh = make_model(arm, seed)
        if len(fresh.variables) != len(model.variables):
            raise RuntimeError("cannot reset the model: variable lists differ.")
        for target, source in zip(model.variables, fresh.variables):
            target.assign(keras.ops.copy(source.value))
        for variable, value in zip(model.optimizer.variables, snapshot):
            variable.assign(keras.ops.copy(value))
        return model


def generation_labels(args):
    """The labels every evaluation generates with: uniform over 0-9."""
    import numpy as np

    rng = np.random.default_rng([args.sampling_seed, 1016])
    return rng.integers(0, NUM_CLASSES, size=args.num_samples).astype("int32")


class LabelledEvaluator(run_lib.Evaluator):
    """`convergence_run.Evaluator` (FID of EMA samples against the test
    split) for a class-conditional model: samples conditional on fixed
    labels."""

    def __init__(self, reference, args):
        super().__init__(reference, IMAGE_SIZE, args)
        self.labels = generation_labels(args)

    def __call__(self, model, initial_noise="standard"):
        from keras_immiscible.callbacks import ema_weights
        from keras_immiscible.metrics.evaluate import update_metrics

        out = {}
        with ema_weights(model) as loaded:
            if not loaded:
                raise RuntimeError("the model has no EMA weights to evaluate.")
            for steps in self.args.sampling_steps:
                self.fid.reset_generated()
                images = model.generate(
                    self.args.num_samples,
                    steps=steps,
                    seed=self.args.sampling_seed,
                    labels=self.labels,
                    verbose=0,
                )
                update_metrics([self.fid], images, "generated", "generated_images")
                out[steps] = float(self.fid.result())
        return out


def load_data():
    import keras_immiscible as ki

    images, labels = ki.data.load_digits(
        split="train", image_size=IMAGE_SIZE, return_labels=True
    )
    test = ki.data.load_digits(split="test", image_size=IMAGE_SIZE)
    return images, labels, test


def class_noise_statistics(assigner, images, labels, batches, batch_size, seed):
    """Per-class statistics of the noise `assigner` gives the batches of
    `seed`'s stream (see the module docstring); a list of dicts, one per
    class, with `class`, `count`, `shift`, `excess`, `toward`, `sq_norm`.

    `assigner` None is plain noise. The noise is a numpy draw that depends
    on `seed` only, so every arm of a seed assigns the same candidates.
    """
    import keras
    import numpy as np

    data = images.reshape(len(images), -1).astype("float64") * 2.0 - 1.0
    dims = data.shape[1]
    direction = np.zeros((NUM_CLASSES, dims))
    for c in range(NUM_CLASSES):
        delta = data[labels == c].mean(0) - data.mean(0)
        direction[c] = delta / max(np.linalg.norm(delta), 1e-12)
    sums = np.zeros((NUM_CLASSES, dims))
    squares = np.zeros(NUM_CLASSES)
    counts = np.zeros(NUM_CLASSES)
    stream = run_lib.BatchStream(np.arange(len(images)), batch_size, seed)
    rng = np.random.default_rng([seed, 1016])
    for _ in range(batches):
        index = stream.take(1)
        x = data[index].astype("float32")
        y = labels[index].astype("int32")
        candidates = rng.standard_normal(x.shape).astype("float32")
        if assigner is None:
            noise = candidates
        else:
            noise = keras.ops.convert_to_numpy(
                assigner.assign(
                    keras.ops.convert_to_tensor(x),
                    keras.ops.convert_to_tensor(candidates),
                    labels=keras.ops.convert_to_tensor(y),
                )
            ).astype("float64")
        np.add.at(sums, y, noise)
        np.add.at(squares, y, (noise**2).sum(1))
        np.add.at(counts, y, 1)
    out = []
    for c in range(NUM_CLASSES):
        n = max(counts[c], 1.0)
        mean = sums[c] / n
        shift2 = float(mean @ mean)
        out.append(
            {
                "class": c,
                "count": int(counts[c]),
                "shift": shift2**0.5,
                "excess": max(shift2 - dims / n, 0.0) ** 0.5,
                "toward": float(mean @ direction[c]),
                "sq_norm": float(squares[c] / n / dims),
            }
        )
    return out


def run_one(arm, seed, args, data, evaluator, pool, log):
    """Trains one (arm, seed) run; returns its records."""
    import keras
    import numpy as np

    images, labels, _ = data
    model = pool.get(arm, seed)
    stream = run_lib.BatchStream(np.arange(len(images)), args.batch_size, seed)
    common_run = {
        "image_size": IMAGE_SIZE,
        "family": FAMILY,
        "method": arm,
        "k": None,
        "seed": seed,
        "num_classes": NUM_CLASSES,
        "backend": keras.backend.backend(),
        "batch_size": args.batch_size,
        "invocation": args.invocation,
    }
    records, done = [], 0
    for step in args.eval_steps:
        batches = step - done
        index = stream.take(batches)
        start = time.perf_counter()
        cpu = time.process_time()
        history = model.fit(
            images[index],
            labels[index],
            batch_size=args.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        train_seconds = time.perf_counter() - start
        train_cpu = time.process_time() - cpu
        done = step
        logs = {key: float(v[-1]) for key, v in history.history.items()}
        start = time.perf_counter()
        fids = evaluator(model)
        eval_seconds = time.perf_counter() - start
        common = dict(
            common_run,
            step=step,
            loss=logs.get("loss"),
            assignment_gain=logs.get("assignment_gain"),
            train_ms_per_step=1000.0 * train_seconds / batches,
            train_cpu_ms_per_step=1000.0 * train_cpu / batches,
            eval_seconds=eval_seconds,
        )
        common.update(run_lib.noise_statistics(model))
        for sampling_steps, fid in fids.items():
            records.append(
                dict(
                    common,
                    sampling_steps=sampling_steps,
                    fid=fid,
                    initial_noise="standard",
                )
            )
        text = " ".join(f"{s}:{v:.2f}" for s, v in fids.items())
        log(
            f"  {arm} seed {seed} step {step}: fid {text}  gain {common['assignment_gain']:.4f}"
            f" ({common['train_ms_per_step']:.0f} ms/step, eval {eval_seconds:.0f} s)"
        )
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if iterations != args.eval_steps[-1]:
        raise RuntimeError(
            f"{arm} seed {seed}: {iterations} optimizer steps, expected {args.eval_steps[-1]}."
        )
    start = time.perf_counter()
    stats = class_noise_statistics(
        make_assigner(arm), images, labels, args.skew_batches, args.batch_size, seed
    )
    for s in stats:
        records.append(
            dict(common_run, kind="class_noise", batches=args.skew_batches, **s)
        )
    log(
        f"  {arm} seed {seed}: class noise shift {_mean(s['shift'] for s in stats):.4f}"
        f" excess {_mean(s['excess'] for s in stats):.4f}"
        f" toward {_mean(s['toward'] for s in stats):.4f}"
        f" ({time.perf_counter() - start:.0f} s)"
    )
    return records


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


# ----------------------------------------------------------------- records


def fid_records(records):
    """Header records and FID records (what `convergence_analysis` reads)."""
    return [r for r in records if r.get("header") or "fid" in r]


def class_records(records):
    return [r for r in records if r.get("kind") == "class_noise"]


def completed(records, eval_steps):
    """(arm, seed) of the runs complete in `records`: FID at the final
    evaluation step and the class-noise records."""
    final = {
        (r["method"], r["seed"])
        for r in records
        if not r.get("header") and "fid" in r and r["step"] == eval_steps[-1]
    }
    skew = {(r["method"], r["seed"]) for r in class_records(records)}
    return final & skew


# ------------------------------------------------------------------ report


def _spread(values, digits=2):
    import numpy as np

    values = np.asarray(values, dtype="float64")
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    return (
        f"{np.median(values):.{digits}f} [{values.min():.{digits}f}, "
        f"{values.max():.{digits}f}]"
    )


def _relabel(records, baseline):
    """FID records with `baseline` renamed "vanilla" (and vanilla dropped),
    for speed-ups against another arm."""
    out = []
    for r in fid_records(records):
        if r.get("header"):
            out.append(r)
        elif r["method"] == baseline:
            out.append(dict(r, method="vanilla"))
        elif r["method"] != "vanilla":
            out.append(r)
    return out


def _speedup_text(summary):
    prefix = ""
    if 2 * summary["censored"] >= summary["seeds"] and summary["kinds"] in ("<", ">"):
        prefix = summary["kinds"]
    text = (
        f"{prefix}{summary['median']:.2f} [{summary['min']:.2f}, {summary['max']:.2f}]"
    )
    if summary["censored"]:
        text += f" ({summary['censored']}/{summary['seeds']} {summary['kinds']})"
    return text


def markdown(records, expected_seeds=None):
    import numpy as np

    heads = analysis.headers(records)
    fids = fid_records(records)
    eval_steps = None
    if heads:
        eval_steps = heads[-1]["config"]["eval_steps"]
        if expected_seeds is None:
            # Every seed any invocation asked for.
            expected_seeds = sorted({s for h in heads for s in h["config"]["seeds"]})
    curves = analysis.curves(fids)  # (size, family, arm, noise, sampling, seed)
    final_step = max((r["step"] for r in analysis.data_records(fids)), default=None)
    if eval_steps:
        final_step = eval_steps[-1]
    # Complete runs only: their last evaluation is the final step.
    complete = {}
    for key, (steps, values) in curves.items():
        if steps[-1] == final_step:
            complete[key] = (steps, values)
    arms = [a for a in ARMS if any(k[2] == a for k in complete)]
    samplings = sorted({k[4] for k in complete})
    seeds_of = {a: sorted({k[5] for k in complete if k[2] == a}) for a in arms}
    lines = [
        "# Per-class vs global linear assignment: class-conditional digits, 16x16, flow matching",
        "",
    ]
    for h in heads:
        lines.append(
            f"- run {h.get('invocation')}: `{h['command']}` on {h['machine']}, {h['date']}"
        )
    if heads:
        config = heads[-1]["config"]
        lines += [
            "",
            "Configuration (last run): "
            + "; ".join(
                f"{k}: {v}" for k, v in config.items() if k not in ("seeds", "arms")
            ),
        ]
    expected = list(expected_seeds or [])
    status = ", ".join(
        f"{a}: {len(seeds_of.get(a, []))} seed(s) {seeds_of.get(a, [])}" for a in ARMS
    )
    missing = [(a, s) for a in ARMS for s in expected if s not in seeds_of.get(a, [])]
    lines += [
        "",
        "## Runs",
        "",
        f"Complete runs (final evaluation at step {final_step}): {status}.",
    ]
    if missing:
        lines += [
            "",
            f"**The grid is incomplete**: {len(missing)} of {len(ARMS) * len(expected)} runs "
            "missing ("
            + ", ".join(f"{a} seed {s}" for a, s in missing)
            + "). Resume with "
            "`python benchmarks/per_class_assignment.py --append --threads 1`; "
            "the tables below use the complete runs only.",
        ]
    else:
        lines += [
            "",
            f"The grid is complete: {len(ARMS)} arms x {len(expected)} seeds.",
        ]
    lines += [
        "",
        "Every arm of a seed trains the same class-conditional UNet from the same initial "
        "weights on the same batches (images and labels); FID of the EMA weights' samples "
        "(Euler, same sampling seed, same uniformly drawn labels for every arm) against the "
        "whole test split. Lower FID is better.",
        "",
        "## Final FID (median [min, max] over seeds)",
        "",
        "| arm | seeds | gain | "
        + " | ".join(f"@{s} Euler steps" for s in samplings)
        + " |",
        "|" + "---|" * (3 + len(samplings)),
    ]
    gains = analysis.assignment_gains(
        [r for r in fids if r.get("header") or r["step"] == final_step]
    )
    for arm in arms:
        row = [
            arm,
            str(len(seeds_of[arm])),
            f"{100 * gains.get((IMAGE_SIZE, FAMILY, arm), 0.0):.2f}%",
        ]
        for s in samplings:
            values = [complete[k][1][-1] for k in complete if k[2] == arm and k[4] == s]
            row.append(_spread(values) if values else "")
        lines.append("| " + " | ".join(row) + " |")
    # Paired differences per seed.
    lines += [
        "",
        "Per seed (final FID; seeds pair the same weights and batches):",
        "",
        "| seed | arm | " + " | ".join(f"@{s}" for s in samplings) + " |",
        "|" + "---|" * (2 + len(samplings)),
    ]
    all_seeds = sorted({k[5] for k in complete})
    for seed in all_seeds:
        for arm in arms:
            values = []
            for s in samplings:
                key = (IMAGE_SIZE, FAMILY, arm, "standard", s, seed)
                values.append(f"{complete[key][1][-1]:.2f}" if key in complete else "")
            if any(values):
                lines.append(f"| {seed} | {arm} | " + " | ".join(values) + " |")
    lines += [
        "",
        "## Speed-up (computed)",
        "",
        "speed-up = training steps the baseline needs to reach its own final FID / steps the "
        "arm needs to reach it, per seed, median [min, max] over seeds "
        "(`benchmarks/convergence_analysis.py`, as in `convergence_regime.md`). `<`: censored "
        "(the arm never reached the baseline's final FID: an upper bound); `>`: reached at the "
        "arm's first evaluation (a lower bound). 'final ratio': arm's final FID / baseline's, "
        "median [min, max] over seeds.",
        "",
    ]
    for baseline, title in (
        ("vanilla", "against no assignment (vanilla)"),
        ("linear", "per-class against global (linear)"),
    ):
        table = analysis.speedups(_relabel(fids, baseline))
        table = {
            k: [r for r in v if r["seed"] in set(all_seeds)] for k, v in table.items()
        }
        lines += [
            f"Speed-up {title}:",
            "",
            "| arm | "
            + " | ".join(f"speed-up @{s}" for s in samplings)
            + " | "
            + " | ".join(f"final ratio @{s}" for s in samplings)
            + " |",
            "|" + "---|" * (1 + 2 * len(samplings)),
        ]
        rows = 0
        for arm in arms:
            if arm in ("vanilla", baseline):
                continue
            speed, ratios = [], []
            for s in samplings:
                per_seed = table.get((IMAGE_SIZE, FAMILY, arm, "standard", s), [])
                if not per_seed:
                    speed.append("")
                    ratios.append("")
                    continue
                summary = analysis.summarize(per_seed)
                speed.append(_speedup_text(summary))
                ratios.append(
                    f"{summary['final_ratio']:.2f} [{summary['final_ratio_min']:.2f}, "
                    f"{summary['final_ratio_max']:.2f}]"
                )
            if any(speed):
                rows += 1
                lines.append(f"| {arm} | " + " | ".join(speed + ratios) + " |")
        if not rows:
            lines.append("| (no paired runs yet) |" + " |" * (2 * len(samplings)))
        lines.append("")
    # Class-prior skew.
    stats = class_records(records)
    lines += [
        "## Class-prior skew of the training noise",
        "",
        "Per class c, over the noise the arm assigns to class-c images in a seed's training "
        "batches (same batches and the same candidate draws for every arm): shift = "
        "||mean_c(noise)|| (256 pixels; i.i.d. N(0, I) noise gives about sqrt(256 / n_c) "
        "from sampling alone), excess = sqrt(max(shift^2 - 256 / n_c, 0)) (the shift beyond "
        "sampling error), toward = <mean_c(noise), u_c> with u_c the unit vector from the "
        "mean training image to the mean class-c image (i.i.d.: about N(0, 1 / n_c)), "
        "sq = mean ||noise||^2 / 256 (1 for N(0, I)). Each averaged over the 10 classes, "
        "then median [min, max] over seeds; 'sq range' is max_c - min_c of sq; "
        "'excess / pixel' is excess / 16, the per-pixel RMS of the class mean's shift in "
        "units of the noise's standard deviation.",
        "",
        "| arm | seeds | batches | shift | excess | excess / pixel | toward | sq range "
        "| sampling-only shift sqrt(256/n_c) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_arm = {}
    for r in stats:
        by_arm.setdefault(r["method"], {}).setdefault(r["seed"], []).append(r)
    for arm in ARMS:
        if arm not in by_arm:
            continue
        per_seed = by_arm[arm]
        shift = [np.mean([c["shift"] for c in v]) for v in per_seed.values()]
        excess = [np.mean([c["excess"] for c in v]) for v in per_seed.values()]
        toward = [np.mean([c["toward"] for c in v]) for v in per_seed.values()]
        sq_range = [
            max(c["sq_norm"] for c in v) - min(c["sq_norm"] for c in v)
            for v in per_seed.values()
        ]
        baseline = [
            np.mean([(256 / max(c["count"], 1)) ** 0.5 for c in v])
            for v in per_seed.values()
        ]
        batches = sorted({c["batches"] for v in per_seed.values() for c in v})
        lines.append(
            f"| {arm} | {len(per_seed)} | {','.join(map(str, batches))} | {_spread(shift, 4)} | "
            f"{_spread(excess, 4)} | {_spread(np.asarray(excess) / IMAGE_SIZE, 4)} | "
            f"{_spread(toward, 4)} | {_spread(sq_range, 4)} | "
            f"{_spread(baseline, 4)} |"
        )
    if by_arm:
        lines += [
            "",
            "Per class (mean over seeds): shift / toward of each arm.",
            "",
            "| class | "
            + " | ".join(f"{a} shift | {a} toward" for a in ARMS if a in by_arm)
            + " |",
            "|" + "---|" * (1 + 2 * sum(1 for a in ARMS if a in by_arm)),
        ]
        for c in range(NUM_CLASSES):
            row = [str(c)]
            for arm in ARMS:
                if arm not in by_arm:
                    continue
                rows = [r for v in by_arm[arm].values() for r in v if r["class"] == c]
                row.append(f"{np.mean([r['shift'] for r in rows]):.4f}")
                row.append(f"{np.mean([r['toward'] for r in rows]):.4f}")
            lines.append("| " + " | ".join(row) + " |")
    # Curves.
    lines += ["", "## FID against training steps (median over complete seeds)", ""]
    for s in samplings:
        keys = {a: [k for k in complete if k[2] == a and k[4] == s] for a in arms}
        steps = next(complete[k][0] for a in arms for k in keys[a])
        lines += [
            f"{s} Euler steps:",
            "",
            "| step | " + " | ".join(f"{a} ({len(keys[a])})" for a in arms) + " |",
            "|" + "---|" * (1 + len(arms)),
        ]
        for i, step in enumerate(steps):
            cells = []
            for a in arms:
                values = [complete[k][1][i] for k in keys[a] if i < len(complete[k][1])]
                cells.append(f"{np.median(values):.2f}" if values else "")
            lines.append(f"| {step:.0f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_report(records, output):
    path = os.path.join(output, STEM + ".md")
    with open(path, "w") as f:
        f.write(markdown(records))
    print(f"wrote {path}", flush=True)
    return path


# -------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(argv)
    path = os.path.join(args.output, STEM + ".json")
    records_file = run_lib.RecordsFile(path)
    if args.report:
        write_report(records_file.read(), args.output)
        return
    existing = records_file.read()
    if existing and not args.append:
        raise SystemExit(f"{path} exists: pass --append to add to it, or remove it.")
    done = completed(existing, args.eval_steps)
    keras = convergence.configure_backend(args)
    args.invocation = 1 + sum(1 for r in existing if r.get("header"))
    labels = generation_labels(args)
    header = _common.header(
        "benchmarks/per_class_assignment.py",
        invocation=args.invocation,
        keras_version=keras.__version__,
        versions=_common.versions(),
        config={
            "backend": args.backend,
            "arms": {
                "vanilla": "assignment=None",
                "linear": "LinearAssignment(solver='scipy')",
                "per_class": "LinearAssignment(solver='scipy', per_class=True)",
            },
            "seeds": args.seeds,
            "steps": args.steps,
            "eval_steps": args.eval_steps,
            "batch_size": args.batch_size,
            "optimizer": f"ki.optimizers.AdamW(learning_rate={args.lr}), Keras defaults otherwise",
            "ema": f"momentum {args.ema_momentum}, warm-up {args.ema_warmup}",
            "network": f"UNet(image_shape=({IMAGE_SIZE}, {IMAGE_SIZE}, 1), num_classes={NUM_CLASSES}, "
            + ", ".join(f"{k}={v}" for k, v in run_lib.NETWORKS[IMAGE_SIZE].items())
            + ")",
            "family": "ImmiscibleFlowMatching: straight path, uniform times, Euler",
            "data": f"ki.data.load_digits(split='train', image_size={IMAGE_SIZE}, return_labels=True)",
            "num_samples": args.num_samples,
            "sampling_steps": args.sampling_steps,
            "sampling_seed": args.sampling_seed,
            "generation_labels": "uniform over 0-9, counts "
            + str([int((labels == c).sum()) for c in range(NUM_CLASSES)]),
            "skew_batches": args.skew_batches,
            "metric": "FID, digits-classifier features (64-d) after a block average to 8x8, "
            "against the 360 test images",
            "threads": args.threads,
        },
    )
    records_file.append([header])
    # Seed by seed, every arm in turn: a partial grid holds complete seeds.
    todo = [
        (arm, seed)
        for seed in args.seeds
        for arm in args.arms
        if (arm, seed) not in done
    ]
    print(
        f"{len(todo)} runs to do ({len(done)} already complete) -> {path}", flush=True
    )
    if todo:
        data = load_data()
        evaluator = LabelledEvaluator(data[2], args)
        pool = ModelPool(args)
    for arm, seed in todo:
        start = time.perf_counter()
        records = run_one(
            arm, seed, args, data, evaluator, pool, lambda m: print(m, flush=True)
        )
        records_file.append(records)
        print(
            f"{arm} seed {seed} done in {time.perf_counter() - start:.0f} s "
            f"({datetime.datetime.now(datetime.timezone.utc):%H:%M} UTC)",
            flush=True,
        )
    write_report(records_file.read(), args.output)


if __name__ == "__main__":
    main()
