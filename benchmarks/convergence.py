"""Convergence benchmark: sample quality vs training steps, vanilla vs immiscible.

Trains the same diffusion model (network, optimizer, batch size, data order,
initial weights) with plain noise ("vanilla", `assignment=None`), with linear
assignment ("linear", exact scipy solver) and with k-nearest selection
("knn"), for several training seeds per arm. Every few steps (densely early,
where the arms differ most) it loads the
optimizer's EMA weights, generates a fixed number of samples with a fixed
sampler, number of sampling steps and sampling seed, and computes FID and KID
against the held-out test split in the digits-classifier feature space.

    python benchmarks/convergence.py            # default: 20-40 min on 2 CPU cores
    python benchmarks/convergence.py --quick    # 5 min on 2 busy cores, smoke test
    python benchmarks/convergence.py --arms vanilla,knn --k 2 --output-suffix k2
    python benchmarks/convergence.py --from-json docs/benchmarks/convergence.json

Backend: TensorFlow by default. Measured with two runs side by side (same
load) on the shared 2-core CPU, at batch 128 its training step took 230-330
ms against JAX's 980-1280 ms, and 210-420 ms against PyTorch's 1170-2130 ms;
one evaluation (360 samples x 20 DDIM steps) took 9 s against PyTorch's 18 s
and about the same as JAX's. On TensorFlow the linear arm's step compiles
without XLA (the scipy solver runs on the host); that changes its speed, not
its math, and this benchmark counts steps, not seconds. The records name the
backend.

Outputs (in --output, default docs/benchmarks):
    convergence.json  flat records: a header record (command, machine, date,
                      configuration), then one record per (method, backend,
                      batch_size, seed, step) with fid, kid, loss and
                      assignment_gain.
    convergence.png   FID (and KID) vs training steps per arm: geometric mean
                      over seeds and the min-max band.
    convergence.md    tables and the speed-up factor (defined below and in
                      the file).

Speed-up factor (see `speedup_table`). For a FID curve, the *smoothed* curve
is the centred moving average of log(FID) over `--smooth` evaluation points
(fewer at the ends). Vanilla's final quality F is the geometric mean of its
last `--final-window` raw FID values; the target is T = (1 + tolerance) * F.
The steps a curve needs to reach T are the first crossing of the smoothed
curve below T, interpolated linearly in log(FID) between the two evaluation
points around the crossing. speed-up = steps(vanilla) / steps(arm). It is
computed (a) per seed pair (vanilla seed s against arm seed s: same initial
weights and data order), reporting the median and min-max over seeds, and
(b) on the seed-mean curves (geometric mean over seeds). A curve that is
below T at its first evaluation gets "<= first step"; one that never reaches
T is censored ("> last step").

Datasets (--dataset):
    digits    the bundled 8x8 scikit-learn digits (default; no network).
              Train split for training, test split (360 images) as the
              reference; features: the digits classifier
              (`keras_immiscible.metrics.digits_feature_extractor`).
    digits16, digits32
              the same digits upsampled (nearest neighbour) to 16x16 / 32x32
              (`load_digits(image_size=...)`), UNet widths (32, 64, 96).
              Generated images are block-averaged back to 8x8 before the
              digits classifier, so all sizes share one feature space.
    cifar10   CIFAR-10 through `keras_immiscible.data.load_cifar10`
              (tensorflow-datasets; the data must be prepared, nothing is
              downloaded) with Inception-V3 features (`--inception-weights
              imagenet`, downloaded by Keras, or a local file). Only when
              asked; meant for a GPU, with a larger --num-samples.
Add a data set in `DATASETS` (a loader returning train and reference images,
the network widths and the metric options).
"""

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

ARMS = ("vanilla", "linear", "knn")
BACKENDS = ("tensorflow", "jax", "torch")

# Default configuration, TensorFlow on 2 CPU cores: 37 minutes measured on
# the shared machine (load average 6-9; median 190-210 ms per training step),
# about 20 minutes expected on quiet cores (about 110 ms per step).
DEFAULTS = dict(
    arms="vanilla,linear,knn",
    seeds="0,1,2",
    steps=800,
    eval_every="25@100,50@300,100",
    num_samples=360,
    batch_size=128,
    k=8,
    lr=1e-3,
    sampling_steps=20,
)
# --quick: a few minutes in total (a smoke test, not a measurement).
QUICK = dict(
    seeds="0,1",
    steps=100,
    eval_every="50",
    num_samples=200,
    sampling_steps=10,
)


# ---------------------------------------------------------------- arguments


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--arms",
        default=None,
        help="comma-separated arms among vanilla, linear, knn "
        f"(default: {DEFAULTS['arms']}).",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="training seeds: a count N (seeds 0..N-1) or a comma list "
        f"(default: {DEFAULTS['seeds']}).",
    )
    parser.add_argument(
        "--steps", type=int, default=None,
        help=f"training steps per run (default: {DEFAULTS['steps']}).",
    )
    parser.add_argument(
        "--eval-every",
        default=None,
        help="evaluation interval: an int N (every N steps) or a schedule "
        "'N1@S1,N2@S2,N3' (every N1 steps up to S1, then every N2 up to S2, "
        f"then every N3). Default: {DEFAULTS['eval_every']}.",
    )
    parser.add_argument(
        "--num-samples", type=int, default=None,
        help="generated images per evaluation "
        f"(default: {DEFAULTS['num_samples']}).",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None,
        help=f"training batch size (default: {DEFAULTS['batch_size']}).",
    )
    parser.add_argument(
        "--k", type=int, default=None,
        help=f"candidates per image of the knn arm (default: {DEFAULTS['k']}).",
    )
    parser.add_argument(
        "--lr", type=float, default=None,
        help=f"AdamW learning rate (default: {DEFAULTS['lr']}).",
    )
    parser.add_argument(
        "--sampling-steps", type=int, default=None,
        help=f"DDIM steps per evaluation (default: {DEFAULTS['sampling_steps']}).",
    )
    parser.add_argument(
        "--sampling-seed", type=int, default=1234,
        help="seed of the evaluation samples, the same for every arm, seed "
        "and step (default: 1234).",
    )
    parser.add_argument(
        "--ema-momentum", type=float, default=0.99,
        help="EMA momentum of the optimizer (default: 0.99).",
    )
    parser.add_argument(
        "--no-ema-warmup", action="store_true",
        help="use Keras' plain EMA instead of the warm-up "
        "min(m, (1 + t) / (10 + t)).",
    )
    parser.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow, the "
        "fastest for this benchmark on CPU).",
    )
    parser.add_argument(
        "--dataset", default="digits",
        help=f"data set: one of {', '.join(DATASET_NAMES)} (default: digits).",
    )
    parser.add_argument(
        "--inception-weights", default="imagenet",
        help="Inception-V3 weights for --dataset cifar10: 'imagenet' "
        "(downloaded by Keras) or a local .h5 file.",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="a few minutes in total: "
        + ", ".join(f"{k}={v}" for k, v in QUICK.items())
        + " (explicit flags win).",
    )
    parser.add_argument(
        "--output", default=os.path.join("docs", "benchmarks"),
        help="output folder (default: docs/benchmarks).",
    )
    parser.add_argument(
        "--output-suffix", default=None,
        help="write convergence_<suffix>.{json,md,png} instead of "
        "convergence.* (default: 'quick' with --quick, else none).",
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.1,
        help="speed-up target: (1 + tolerance) x vanilla's final FID "
        "(default: 0.1).",
    )
    parser.add_argument(
        "--smooth", type=int, default=3,
        help="moving-average window (evaluation points, odd) of log(FID) "
        "for the speed-up (default: 3; 1: no smoothing).",
    )
    parser.add_argument(
        "--final-window", type=int, default=3,
        help="vanilla's final quality: geometric mean of its last N FID "
        "values (default: 3).",
    )
    parser.add_argument(
        "--from-json", default=None,
        help="do not train: rebuild the .md and .png from this records file.",
    )
    parser.add_argument(
        "--no-reuse", action="store_true",
        help="compile a new model for every run instead of resetting one "
        "compiled model per arm (slower; the results must not change).",
    )
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    resolve_args(args)
    return args


def resolve_args(args):
    """Fills defaults (quick or full), parses lists and checks ranges."""
    table = dict(DEFAULTS)
    if args.quick:
        table.update(QUICK)
    for key, value in table.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.backend is None:
        args.backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if args.output_suffix is None and args.quick:
        args.output_suffix = "quick"
    args.arms = parse_arms(args.arms)
    args.seeds = parse_seeds(args.seeds)
    for name in ("steps", "num_samples", "batch_size", "k", "sampling_steps"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"`--{name.replace('_', '-')}` must be >= 1, got {value}.")
    if not args.lr > 0:
        raise ValueError(f"`--lr` must be > 0, got {args.lr}.")
    if not 0.0 <= args.ema_momentum < 1.0:
        raise ValueError(
            f"`--ema-momentum` must be in [0, 1), got {args.ema_momentum}."
        )
    if args.smooth < 1 or args.smooth % 2 == 0:
        raise ValueError(f"`--smooth` must be an odd integer >= 1, got {args.smooth}.")
    if args.final_window < 1:
        raise ValueError(f"`--final-window` must be >= 1, got {args.final_window}.")
    if args.tolerance < 0:
        raise ValueError(f"`--tolerance` must be >= 0, got {args.tolerance}.")
    if args.dataset not in DATASET_NAMES:
        raise ValueError(
            f"`--dataset` must be one of {DATASET_NAMES}, got {args.dataset!r}."
        )
    args.eval_steps = eval_schedule(args.eval_every, args.steps)
    return args


def parse_arms(text):
    arms = [a.strip().lower() for a in str(text).split(",") if a.strip()]
    if not arms:
        raise ValueError("`--arms` must name at least one arm.")
    for arm in arms:
        if arm not in ARMS:
            raise ValueError(f"`--arms`: unknown arm {arm!r}; expected {ARMS}.")
    if len(set(arms)) != len(arms):
        raise ValueError(f"`--arms` has duplicates: {text!r}.")
    return arms


def parse_seeds(text):
    text = str(text).strip()
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return list(range(count))
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(
            f"`--seeds` must be a count N >= 1 or a comma list of ints, got {text!r}."
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"`--seeds` must list distinct ints, got {text!r}.")
    return seeds


def eval_schedule(spec, total_steps):
    """Evaluation steps from `"N"` or `"N1@S1,N2@S2,...,Nk"` (the last part
    without `@` applies up to the end). The final step is always included.

    >>> eval_schedule("25@100,50", 250)
    [25, 50, 75, 100, 150, 200, 250]
    """
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    error = (
        "`--eval-every` must be an int N or 'N1@S1,N2@S2,...,Nk' with "
        f"positive ints and increasing S, got {spec!r}."
    )
    if not parts:
        raise ValueError(error)
    steps, start = [], 0
    for i, part in enumerate(parts):
        try:
            if "@" in part:
                every, until = (int(v) for v in part.split("@"))
            else:
                if i != len(parts) - 1:
                    raise ValueError
                every, until = int(part), total_steps
        except ValueError:
            raise ValueError(error) from None
        if every < 1 or until <= start:
            raise ValueError(error)
        until = min(until, total_steps)
        step = start + every
        while step <= until:
            steps.append(step)
            step += every
        start = until
        if start >= total_steps:
            break
    if not steps or steps[-1] != total_steps:
        steps.append(total_steps)
    return sorted(set(steps))


# ----------------------------------------------------------------- data sets


def _area_downsample(images, size):
    """(n, H, W, C) -> (n, size, size, C) by averaging H/size x W/size blocks."""
    import numpy as np

    images = np.asarray(images, dtype="float32")
    n, h, w, c = images.shape
    if h % size or w % size:
        raise ValueError(f"cannot area-average {h}x{w} images to {size}x{size}.")
    return images.reshape(n, size, h // size, size, w // size, c).mean(axis=(2, 4))


def _load_digits_sized(image_size):
    import keras_immiscible as ki

    # Nearest-neighbour upsampling: a block average gives back the 8x8 image
    # exactly, so the 8x8 digits classifier scores every size.
    kwargs = {} if image_size == 8 else {"image_size": image_size}
    train = ki.data.load_digits(split="train", dtype="float32", **kwargs)
    test = ki.data.load_digits(split="test", dtype="float32", **kwargs)
    return train, test


def _digits_metric_options(image_size):
    from keras_immiscible.metrics import digits_feature_extractor

    if image_size == 8:
        return dict(feature_extractor="digits")
    extractor = digits_feature_extractor()

    def features(images):
        # Back to the classifier's 8x8 grid: the same feature space for
        # every image size.
        return extractor(_area_downsample(images, 8))

    return dict(feature_extractor=features)


def _digits(image_size):
    def load(args):
        train, test = _load_digits_sized(image_size)
        return dict(
            train=train,
            reference=test,
            widths=(32, 64) if image_size == 8 else (32, 64, 96),
            block_depth=2,
            metric_options=_digits_metric_options(image_size),
        )

    return load


def _cifar10(args):
    import numpy as np

    import keras_immiscible as ki

    def split(name):
        # Raises DatasetNotPreparedError (no download) when the data is
        # missing; prepare it with tensorflow-datasets first.
        dataset = ki.data.load_cifar10(
            split=name, batch_size=5000, shuffle=False, cache=False,
            drop_remainder=False, seed=0,
        )
        return np.concatenate(list(dataset.as_numpy_iterator()), axis=0)

    return {
        "train": split("train"),
        "reference": split("test"),
        "widths": (32, 64, 96, 128),
        "block_depth": 2,
        "metric_options": {
            "feature_extractor": None,
            "weights": args.inception_weights,
        },
    }


DATASETS = {
    "digits": _digits(8),
    "digits16": _digits(16),
    "digits32": _digits(32),
    "cifar10": _cifar10,
}
DATASET_NAMES = tuple(DATASETS)


class BatchStream:
    """The training data order of one seed: consecutive epochs, each a fresh
    permutation, cut into full batches (batches may straddle epochs). The same
    seed gives every arm the same batches."""

    def __init__(self, images, batch_size, seed):
        import numpy as np

        self.images = images
        self.batch_size = batch_size
        self.rng = np.random.default_rng([seed, 2406])
        self.buffer = np.empty((0,), dtype="int64")

    def take(self, num_batches):
        import numpy as np

        needed = num_batches * self.batch_size
        while self.buffer.shape[0] < needed:
            self.buffer = np.concatenate(
                [self.buffer, self.rng.permutation(len(self.images))]
            )
        index, self.buffer = self.buffer[:needed], self.buffer[needed:]
        return self.images[index]


# ------------------------------------------------------------------- model


def make_optimizer(keras, lr, ema_momentum, warmup):
    """AdamW with EMA for segment-wise training (see `EvalAdamW`)."""

    class EvalAdamW(keras.optimizers.AdamW):
        """AdamW whose EMA has a warm-up and is not copied into the model at
        the end of `fit`.

        Args:
            ema_warmup: use momentum min(ema_momentum, (1 + t) / (10 + t))
                at step t instead of a constant (so that short runs do not
                carry the random initial weights in the average).
            **kwargs: `keras.optimizers.AdamW` arguments.

        This benchmark trains in segments (one `fit` call between two
        evaluations) and evaluates with `ema_weights(model)`. Keras' own
        `finalize_variable_values` would overwrite the training weights with
        the average at the end of every `fit` call, i.e. restart training
        from the EMA weights after each evaluation; here it does nothing.

        Example:

        ```python
        optimizer = EvalAdamW(learning_rate=1e-3, use_ema=True, ema_warmup=True)
        ```
        """

        def __init__(self, ema_warmup=True, **kwargs):
            super().__init__(**kwargs)
            self.ema_warmup = bool(ema_warmup)

        def _update_model_variables_moving_average(self, trainable_variables):
            if not self.use_ema:
                return
            ops = keras.ops
            t = ops.cast(self.iterations, "float32")
            momentum = ops.convert_to_tensor(self.ema_momentum, "float32")
            if self.ema_warmup:
                momentum = ops.minimum(momentum, (1.0 + t) / (10.0 + t))
            # Keras' rule: the average starts as a copy at the first step.
            momentum = momentum * ops.cast(ops.not_equal(self.iterations, 0), "float32")
            for var, average in zip(
                trainable_variables, self._model_variables_moving_average
            ):
                if average is not None:
                    m = ops.cast(momentum, var.dtype)
                    average.assign(m * average + (1.0 - m) * var)

        def finalize_variable_values(self, var_list):
            pass

        def get_config(self):
            config = super().get_config()
            config["ema_warmup"] = self.ema_warmup
            return config

    return EvalAdamW(
        learning_rate=lr,
        use_ema=True,
        ema_momentum=ema_momentum,
        ema_warmup=warmup,
    )


def _assignment(arm, args):
    import keras_immiscible as ki

    return {
        "vanilla": None,
        "linear": ki.assignment.LinearAssignment(solver="scipy"),
        "knn": ki.assignment.KNNSelection(k=args.k),
    }[arm]


def fresh_model(arm, seed, args, data):
    """An uncompiled model of `arm` whose initial weights and noise seed
    depend on `seed` only (the same initial weights for every arm)."""
    import keras

    import keras_immiscible as ki

    keras.utils.set_random_seed(seed)
    network = ki.layers.UNet(
        image_shape=data["train"].shape[1:],
        widths=data["widths"],
        block_depth=data["block_depth"],
    )
    return ki.ImmiscibleDiffusion(
        network, assignment=_assignment(arm, args), seed=seed
    )


class ModelPool:
    """One compiled model per arm, reset to a fresh seed's state for every
    run, so that the training step and the sampler compile once per arm
    instead of once per run.

    Resetting copies every variable of a freshly built (uncompiled) model of
    that seed (network weights and the noise `SeedGenerator` state) into the
    compiled model, and restores the optimizer's variables (step counter,
    moments, EMA averages) to their values right after `optimizer.build`.
    The EMA average is overwritten at the first step anyway. A reset model
    trains exactly like a new one: compare with `--no-reuse`, which
    compiles a new model for every run.
    """

    def __init__(self, args, data, reuse=True):
        self.args = args
        self.data = data
        self.reuse = reuse
        self.models = {}

    def get(self, arm, seed):
        import keras

        if arm not in self.models or not self.reuse:
            model = fresh_model(arm, seed, self.args, self.data)
            import warnings

            with warnings.catch_warnings():
                # TensorFlow: the host (scipy) solver compiles without XLA,
                # which changes the speed only, not the math measured here.
                warnings.filterwarnings(
                    "ignore", message=".*solves the assignment on the host.*"
                )
                model.compile(
                    optimizer=make_optimizer(
                        keras,
                        self.args.lr,
                        self.args.ema_momentum,
                        not self.args.no_ema_warmup,
                    )
                )
            model.optimizer.build(model.trainable_variables)
            snapshot = [
                keras.ops.copy(v.value) for v in model.optimizer.variables
            ]
            self.models[arm] = (model, snapshot)
            return model
        model, snapshot = self.models[arm]
        fresh = fresh_model(arm, seed, self.args, self.data)
        if len(fresh.variables) != len(model.variables):
            raise RuntimeError(
                "cannot reset the model: the fresh model has "
                f"{len(fresh.variables)} variables, the compiled one "
                f"{len(model.variables)}."
            )
        for target, source in zip(model.variables, fresh.variables):
            if tuple(target.shape) != tuple(source.shape):
                raise RuntimeError(
                    f"cannot reset {target.path}: shape {target.shape} vs "
                    f"{source.shape} ({source.path})."
                )
            target.assign(keras.ops.copy(source.value))
        for variable, value in zip(model.optimizer.variables, snapshot):
            variable.assign(keras.ops.copy(value))
        return model


class Evaluator:
    """FID and KID of a model's EMA samples against fixed reference features
    (extracted once)."""

    def __init__(self, reference, metric_options, args):
        from keras_immiscible.metrics import FID
        from keras_immiscible.metrics import KID
        from keras_immiscible.metrics.evaluate import add_real_images

        n = min(len(reference), args.num_samples)
        self.fid = FID(batch_size=512, **metric_options)
        self.kid = KID(
            batch_size=512, subset_size=n, num_subsets=20, seed=0, **metric_options
        )
        self.metrics = [self.fid, self.kid]
        add_real_images(self.metrics, reference, 512, verbose=0)
        self.args = args

    def __call__(self, model):
        from keras_immiscible.callbacks import ema_weights
        from keras_immiscible.metrics.evaluate import update_metrics

        for metric in self.metrics:
            metric.reset_generated()
        with ema_weights(model) as loaded:
            if not loaded:
                raise RuntimeError("the model has no EMA weights to evaluate.")
            images = model.generate(
                self.args.num_samples,
                steps=self.args.sampling_steps,
                seed=self.args.sampling_seed,
            )
        update_metrics(self.metrics, images, "generated", "generated_images")
        return float(self.fid.result()), float(self.kid.result())


def run_one(arm, seed, args, data, evaluator, log, pool):
    """Trains one (arm, seed) and returns its records, one per evaluation."""
    import keras
    import numpy as np

    model = pool.get(arm, seed)
    stream = BatchStream(data["train"], args.batch_size, seed)
    records, done = [], 0
    train_time = eval_time = 0.0
    for step in args.eval_steps:
        batches = step - done
        start = time.perf_counter()
        history = model.fit(
            stream.take(batches),
            batch_size=args.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        seconds = time.perf_counter() - start
        train_time += seconds
        done = step
        start = time.perf_counter()
        fid, kid = evaluator(model)
        eval_seconds = time.perf_counter() - start
        eval_time += eval_seconds
        logs = {k: float(v[-1]) for k, v in history.history.items()}
        record = {
            "method": arm,
            "backend": keras.backend.backend(),
            "batch_size": args.batch_size,
            "seed": seed,
            "step": step,
            "fid": fid,
            "kid": kid,
            "loss": logs.get("loss"),
            "assignment_gain": logs.get("assignment_gain"),
            "k": args.k if arm == "knn" else None,
            "dataset": args.dataset,
            "segment_steps": batches,
            "train_ms_per_step": 1000.0 * seconds / batches,
            "eval_seconds": eval_seconds,
        }
        records.append(record)
        if args.verbose:
            log(
                f"  {arm:8s} seed {seed} step {step:5d}  fid {fid:8.3f}  "
                f"kid {kid:8.5f}  loss {record['loss']:.4f}  "
                f"gain {record['assignment_gain']:.4f}  "
                f"({record['train_ms_per_step']:.0f} ms/step, eval {eval_seconds:.1f} s)"
            )
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if iterations != args.steps:
        raise RuntimeError(
            f"{arm} seed {seed}: the optimizer ran {iterations} steps, "
            f"expected {args.steps}."
        )
    log(
        f"{arm} seed {seed}: train {train_time:.0f} s, eval {eval_time:.0f} s, "
        f"final fid {records[-1]['fid']:.3f}"
    )
    return records, np.float64(train_time + eval_time)


# ---------------------------------------------------------------- analysis


def smooth_log(values, window):
    """Centred moving average of log(values) over `window` points (fewer at
    the ends), returned in log space."""
    import numpy as np

    logs = np.log(np.maximum(np.asarray(values, dtype="float64"), 1e-12))
    half = window // 2
    return np.array(
        [logs[max(0, i - half) : i + half + 1].mean() for i in range(len(logs))]
    )


def final_quality(values, window):
    """Geometric mean of the last `window` values."""
    import numpy as np

    values = np.asarray(values, dtype="float64")[-window:]
    return float(np.exp(np.mean(np.log(np.maximum(values, 1e-12)))))


def steps_to_reach(steps, log_curve, target):
    """First step at which `log_curve` (log FID at `steps`) crosses below
    log(target), interpolated linearly between evaluation points.

    Returns `(steps, kind)` with kind "" (crossing), "<=" (already below at
    the first evaluation) or ">" (never: censored at the last step).
    """
    log_target = math.log(target)
    for i, value in enumerate(log_curve):
        if value <= log_target:
            if i == 0:
                return float(steps[0]), "<="
            prev = log_curve[i - 1]
            frac = (prev - log_target) / (prev - value)
            return float(steps[i - 1] + frac * (steps[i] - steps[i - 1])), ""
    return float(steps[-1]), ">"


def _ratio(vanilla, arm):
    """speed-up = vanilla steps / arm steps, with what is known about it.

    Each steps value is exact (""), an upper bound ("<=": reached at or
    before the first evaluation) or a lower bound (">": never reached). The
    ratio's kind is "" (exact), "<=" (an upper bound), ">=" (a lower bound)
    or "?" (unbounded both ways).
    """
    (v, vk), (a, ak) = vanilla, arm
    upper = vk in ("", "<=") and ak in ("", ">")
    lower = vk in ("", ">") and ak in ("", "<=")
    if upper and lower:
        kind = ""
    elif upper:
        kind = "<="
    elif lower:
        kind = ">="
    else:
        kind = "?"
    return v / a, kind


def curves(records):
    """{(method, seed): (steps, fid, kid, loss, gain)} sorted by step."""
    import numpy as np

    out = {}
    for r in records:
        if r.get("header"):
            continue
        out.setdefault((r["method"], r["seed"]), []).append(r)
    result = {}
    for key, rows in out.items():
        rows.sort(key=lambda r: r["step"])
        result[key] = {
            name: np.array(
                [np.nan if r.get(name) is None else r[name] for r in rows],
                dtype="float64",
            )
            for name in ("step", "fid", "kid", "loss", "assignment_gain")
        }
    return result


def speedup_table(records, tolerance, window, final_window):
    """Speed-ups per seed pair and on the seed-mean curves.

    Returns `{"per_seed": {arm: [(seed, value, kind, v_steps, a_steps)]},
    "mean_curve": {arm: (value, kind, v_steps, a_steps)}, "target": ...}`.
    """
    import numpy as np

    data = curves(records)
    arms = sorted({m for m, _ in data}, key=lambda m: ARMS.index(m))
    seeds = sorted({s for _, s in data})
    result = {"per_seed": {}, "mean_curve": {}, "targets": {}}
    if "vanilla" not in arms:
        return result
    for seed in seeds:
        if ("vanilla", seed) not in data:
            continue
        v = data[("vanilla", seed)]
        target = (1.0 + tolerance) * final_quality(v["fid"], final_window)
        result["targets"][seed] = target
        v_reach = steps_to_reach(v["step"], smooth_log(v["fid"], window), target)
        for arm in arms:
            if arm == "vanilla" or (arm, seed) not in data:
                continue
            a = data[(arm, seed)]
            a_reach = steps_to_reach(a["step"], smooth_log(a["fid"], window), target)
            value, kind = _ratio(v_reach, a_reach)
            result["per_seed"].setdefault(arm, []).append(
                (seed, value, kind, v_reach, a_reach)
            )
    # Seed-mean curves: geometric mean of the FID over seeds, per step.
    mean = {}
    for arm in arms:
        runs = [data[(arm, s)] for s in seeds if (arm, s) in data]
        steps = runs[0]["step"]
        if any(len(r["step"]) != len(steps) or np.any(r["step"] != steps) for r in runs):
            continue
        mean[arm] = (steps, np.exp(np.mean([np.log(r["fid"]) for r in runs], axis=0)))
    if "vanilla" in mean:
        steps, fid = mean["vanilla"]
        target = (1.0 + tolerance) * final_quality(fid, final_window)
        result["targets"]["mean"] = target
        v_reach = steps_to_reach(steps, smooth_log(fid, window), target)
        for arm, (a_steps, a_fid) in mean.items():
            if arm == "vanilla":
                continue
            a_reach = steps_to_reach(a_steps, smooth_log(a_fid, window), target)
            value, kind = _ratio(v_reach, a_reach)
            result["mean_curve"][arm] = (value, kind, v_reach, a_reach)
    return result


def _fmt_reach(reach):
    value, kind = reach
    return f"{kind}{value:.0f}"


def _fmt_ratio(value, kind):
    if kind == "?":
        return "n/a"
    return f"{kind}{value:.2f}x"


def _feature_space(dataset):
    if dataset == "cifar10":
        return "the Inception-V3 pool feature space (2048-d)"
    if dataset in ("digits16", "digits32"):
        return (
            "the digits-classifier feature space (64-d), samples "
            "block-averaged to 8x8 first"
        )
    return "the digits-classifier feature space (64-d)"


def _median_step_ms(records, arm):
    import numpy as np

    values = [
        r["train_ms_per_step"]
        for r in records
        if not r.get("header") and r["method"] == arm and r["step"] != r["segment_steps"]
    ]
    return float(np.median(values)) if values else float("nan")


def summary_lines(records, args):
    """A few computed sentences: final FID, paired ratios, speed-up."""
    import numpy as np

    data = curves(records)
    arms = sorted({m for m, _ in data}, key=lambda m: ARMS.index(m))
    seeds = sorted({s for _, s in data})
    if "vanilla" not in arms or len(arms) < 2:
        return []
    table = speedup_table(records, args.tolerance, args.smooth, args.final_window)
    lines = ["## Summary (computed)", ""]
    for arm in arms:
        if arm == "vanilla":
            continue
        paired = [s for s in seeds if (arm, s) in data and ("vanilla", s) in data]
        steps = data[(arm, paired[0])]["step"]
        ratios = np.array(
            [data[(arm, s)]["fid"] / data[("vanilla", s)]["fid"] for s in paired]
        )
        mean_ratio = np.exp(np.log(ratios).mean(axis=0))
        best = int(np.argmin(mean_ratio))
        better = [int(st) for st, r in zip(steps, ratios.T) if np.all(r < 1)]
        final_arm = np.exp(np.mean([np.log(data[(arm, s)]["fid"][-1]) for s in paired]))
        final_van = np.exp(
            np.mean([np.log(data[("vanilla", s)]["fid"][-1]) for s in paired])
        )
        mc = table["mean_curve"].get(arm)
        speed = _fmt_ratio(mc[0], mc[1]) if mc else "n/a"
        lines.append(
            f"- **{arm}**: FID at step {int(steps[-1])} {final_arm:.2f} vs "
            f"vanilla {final_van:.2f} (paired ratio {mean_ratio[-1]:.2f}); "
            f"best paired ratio {mean_ratio[best]:.2f} at step {int(steps[best])}; "
            "better than vanilla on every seed at steps: "
            f"{', '.join(map(str, better)) if better else 'none'}; "
            f"speed-up to (1 + {args.tolerance:g}) x vanilla's final FID on the "
            f"seed-mean curves: {speed}."
        )
    lines.append("")
    return lines


def write_markdown(records, args, path, extra_tolerances=(0.25, 0.5, 1.0)):
    import numpy as np

    header = next(r for r in records if r.get("header"))
    data = curves(records)
    arms = sorted({m for m, _ in data}, key=lambda m: ARMS.index(m))
    seeds = sorted({s for _, s in data})
    config = header.get("config", {})
    lines = [
        f"# Convergence: {', '.join(arms)} on {config.get('dataset', '?')}",
        "",
        f"Command: `{header['command']}`  ",
        f"Machine: {header['machine']}  ",
        f"Date: {header['date']}  ",
        f"Wall time: {header.get('wall_seconds', float('nan')):.0f} s; "
        f"load average at start/end: {header.get('load_start')} / {header.get('load_end')}",
        "",
        "Configuration: " + ", ".join(f"{k}={v}" for k, v in config.items()),
        "",
        "Each arm trains the same network from the same initial weights on the "
        "same batches for a given seed; only the noise assignment differs. "
        "FID/KID: EMA weights, "
        f"{config.get('num_samples')} samples, DDIM with "
        f"{config.get('sampling_steps')} steps and sampling seed "
        f"{config.get('sampling_seed')}, against the test split, in "
        f"{_feature_space(config.get('dataset'))}. Lower is better.",
        "",
    ]
    lines += summary_lines(records, args)
    lines += [
        "## FID vs training steps (geometric mean over seeds, [min, max])",
        "",
    ]
    steps = data[(arms[0], seeds[0])]["step"]
    lines.append("| step | " + " | ".join(arms) + " |")
    lines.append("|---" * (len(arms) + 1) + "|")
    for i, step in enumerate(steps):
        cells = []
        for arm in arms:
            values = [data[(arm, s)]["fid"][i] for s in seeds if (arm, s) in data]
            gm = float(np.exp(np.mean(np.log(values))))
            cells.append(f"{gm:.2f} [{min(values):.2f}, {max(values):.2f}]")
        lines.append(f"| {int(step)} | " + " | ".join(cells) + " |")
    others = [a for a in arms if a != "vanilla"]
    if "vanilla" in arms and others:
        lines += [
            "",
            "## Paired FID ratio arm / vanilla (same seed; geometric mean "
            "over seeds, [min, max]; below 1: the arm is better)",
            "",
            "| step | " + " | ".join(others) + " |",
            "|---" * (len(others) + 1) + "|",
        ]
        for i, step in enumerate(steps):
            cells = []
            for arm in others:
                ratios = [
                    data[(arm, s)]["fid"][i] / data[("vanilla", s)]["fid"][i]
                    for s in seeds
                    if (arm, s) in data and ("vanilla", s) in data
                ]
                gm = float(np.exp(np.mean(np.log(ratios))))
                cells.append(f"{gm:.2f} [{min(ratios):.2f}, {max(ratios):.2f}]")
            lines.append(f"| {int(step)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## KID (mean over seeds +- std)",
        "",
        "| step | " + " | ".join(f"KID {a}" for a in arms) + " |",
        "|---" * (len(arms) + 1) + "|",
    ]
    for i, step in enumerate(steps):
        cells = []
        for arm in arms:
            values = np.array(
                [data[(arm, s)]["kid"][i] for s in seeds if (arm, s) in data]
            )
            cells.append(f"{values.mean():.4g} +- {values.std():.2g}")
        lines.append(f"| {int(step)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Loss and assignment gain (mean over seeds, last training segment)",
        "",
        "| arm | final loss | assignment gain |",
        "|---|---|---|",
    ]
    for arm in arms:
        loss = np.mean([data[(arm, s)]["loss"][-1] for s in seeds if (arm, s) in data])
        gain = np.mean(
            [data[(arm, s)]["assignment_gain"][-1] for s in seeds if (arm, s) in data]
        )
        lines.append(f"| {arm} | {loss:.4f} | {gain:.4f} |")
    lines += [
        "",
        "Median training time per step (all segments but the first of each "
        "run, which may include compilation; wall clock on a shared machine, so only a "
        "rough guide): "
        + ", ".join(
            f"{arm} {_median_step_ms(records, arm):.0f} ms" for arm in arms
        )
        + ".",
    ]
    lines += [
        "",
        "The loss is not a quality measure across arms (the assigned noise "
        "is easier to predict); assignment gain is the relative reduction of "
        "the mean image-noise distance.",
        "",
        "## Speed-up",
        "",
        "Definition: for each FID curve take the centred moving average of "
        f"log(FID) over {args.smooth} evaluation points (fewer at the ends). "
        f"Vanilla's final quality F is the geometric mean of its last "
        f"{args.final_window} FID values; the target is T = (1 + tol) x F. "
        "steps(curve) is where the smoothed curve first crosses below T "
        "(linear interpolation in log FID between evaluations). speed-up = "
        "steps(vanilla) / steps(arm), per seed pair (vanilla seed s vs arm "
        "seed s: same initial weights and batches) and on the seed-mean "
        "curves (geometric mean over seeds). '<=' / '>=' mark bounds: an arm "
        "that never reaches T (censored at the last step) or a curve already "
        "below T at its first evaluation.",
        "",
    ]
    for tol in (args.tolerance,) + tuple(t for t in extra_tolerances if t != args.tolerance):
        table = speedup_table(records, tol, args.smooth, args.final_window)
        primary = tol == args.tolerance
        lines += [
            f"### tol = {tol:g}" + (" (primary)" if primary else ""),
            "",
            "| arm | per seed: speed-up (vanilla steps / arm steps) | median [min, max] | seed-mean curves |",
            "|---|---|---|---|",
        ]
        for arm, rows in table["per_seed"].items():
            per = ", ".join(
                f"s{seed}: {_fmt_ratio(v, k)} ({_fmt_reach(vr)}/{_fmt_reach(ar)})"
                for seed, v, k, vr, ar in rows
            )
            values = np.array([v for _, v, k, _, _ in rows if k != "?"])
            mc = table["mean_curve"].get(arm)
            mean_text = (
                f"{_fmt_ratio(mc[0], mc[1])} ({_fmt_reach(mc[2])}/{_fmt_reach(mc[3])})"
                if mc else "n/a"
            )
            spread = (
                f"{np.median(values):.2f}x [{values.min():.2f}, {values.max():.2f}]"
                if values.size else "n/a"
            )
            lines.append(f"| {arm} | {per} | {spread} | {mean_text} |")
        target = table["targets"].get("mean")
        if target is not None:
            lines += ["", f"Target T on the seed-mean vanilla curve: FID {target:.2f}."]
        lines.append("")
    path_md = path
    with open(path_md, "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    data = curves(records)
    arms = sorted({m for m, _ in data}, key=lambda m: ARMS.index(m))
    seeds = sorted({s for _, s in data})
    header = next(r for r in records if r.get("header"))
    config = header.get("config", {})
    colors = {"vanilla": "tab:gray", "linear": "tab:blue", "knn": "tab:orange"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for arm in arms:
        runs = [data[(arm, s)] for s in seeds if (arm, s) in data]
        steps = runs[0]["step"]
        label = arm if arm != "knn" else f"knn (k={config.get('k')})"
        fid = np.array([r["fid"] for r in runs])
        kid = np.array([r["kid"] for r in runs])
        for ax, values, center in (
            (axes[0], fid, np.exp(np.log(fid).mean(axis=0))),
            (axes[1], kid, kid.mean(axis=0)),
        ):
            ax.plot(steps, center, color=colors[arm], label=f"{label}, {len(runs)} seeds")
            ax.fill_between(
                steps, values.min(axis=0), values.max(axis=0),
                color=colors[arm], alpha=0.2, linewidth=0,
            )
    if "vanilla" in arms:
        for arm in arms:
            if arm == "vanilla":
                continue
            paired = [s for s in seeds if (arm, s) in data and ("vanilla", s) in data]
            ratios = np.array(
                [data[(arm, s)]["fid"] / data[("vanilla", s)]["fid"] for s in paired]
            )
            steps = data[(arm, paired[0])]["step"]
            axes[2].plot(
                steps, np.exp(np.log(ratios).mean(axis=0)), color=colors[arm],
                label=f"{arm} / vanilla",
            )
            axes[2].fill_between(
                steps, ratios.min(axis=0), ratios.max(axis=0),
                color=colors[arm], alpha=0.2, linewidth=0,
            )
        axes[2].axhline(1.0, color="black", linewidth=0.8)
    axes[2].set_yscale("log")
    axes[2].yaxis.set_major_locator(
        matplotlib.ticker.LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
    )
    axes[2].yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes[2].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[2].set_ylabel("FID(arm) / FID(vanilla), same seed, log scale")
    axes[2].set_title("Paired FID ratio (below 1: arm better)")
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_locator(
        matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0))
    )
    axes[0].yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes[0].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].set_ylabel("FID, log scale")
    axes[0].set_title("FID: geometric mean over seeds, min-max band")
    axes[1].set_yscale("symlog", linthresh=0.1)
    axes[1].set_ylabel("KID, symlog scale (linear below 0.1)")
    axes[1].set_title("KID: mean over seeds, min-max band")
    for ax in axes:
        ax.set_xlabel("training steps")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"{config.get('dataset')}, batch {config.get('batch_size')}, "
        f"backend {config.get('backend')}, EMA samples: {config.get('num_samples')} "
        f"x DDIM-{config.get('sampling_steps')}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------- main


def output_paths(args):
    stem = "convergence" + (f"_{args.output_suffix}" if args.output_suffix else "")
    return {ext: os.path.join(args.output, f"{stem}.{ext}") for ext in ("json", "md", "png")}


def machine_description():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} CPUs, no GPU used"


def _load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def report(records, args, paths):
    write_markdown(records, args, paths["md"])
    plot(records, paths["png"])


def main(argv=None):
    args = parse_args(argv)
    if args.from_json and args.output_suffix is None:
        # Rebuild next to the records: <dir>/<stem>.{md,png}.
        args.output = os.path.dirname(args.from_json) or "."
        stem = os.path.splitext(os.path.basename(args.from_json))[0]
        args.output_suffix = stem[len("convergence_"):] if stem.startswith("convergence_") else None
    paths = output_paths(args)
    os.makedirs(args.output, exist_ok=True)
    if args.from_json:
        with open(args.from_json) as f:
            records = json.load(f)
        report(records, args, paths)
        with open(paths["md"]) as f:
            print(f.read())
        return records

    os.environ["KERAS_BACKEND"] = args.backend
    import keras

    def log(message):
        print(message, flush=True)

    if keras.backend.backend() != args.backend:
        raise RuntimeError(
            f"Keras was already imported with backend {keras.backend.backend()!r}."
        )
    data = DATASETS[args.dataset](args)
    evaluator = Evaluator(data["reference"], data["metric_options"], args)
    config = {
        "dataset": args.dataset,
        "backend": args.backend,
        "arms": args.arms,
        "seeds": args.seeds,
        "steps": args.steps,
        "eval_steps": args.eval_steps,
        "batch_size": args.batch_size,
        "k": args.k,
        "lr": args.lr,
        "optimizer": "AdamW (Keras defaults otherwise)",
        "ema_momentum": args.ema_momentum,
        "ema_warmup": not args.no_ema_warmup,
        "network": f"UNet(widths={tuple(data['widths'])}, block_depth={data['block_depth']})",
        "linear_solver": "scipy",
        "num_train_images": len(data["train"]),
        "num_reference_images": len(data["reference"]),
        "num_samples": args.num_samples,
        "sampler": "ddim (eta 0)",
        "sampling_steps": args.sampling_steps,
        "sampling_seed": args.sampling_seed,
        "reuse_compiled_models": not args.no_reuse,
        "kid_subsets": f"20 subsets of {min(len(data['reference']), args.num_samples)}",
    }
    command = "python " + " ".join([sys.argv[0]] + sys.argv[1:]) if argv is None else (
        "python benchmarks/convergence.py " + " ".join(argv)
    )
    header = {
        "header": True,
        "command": command,
        "machine": machine_description(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "keras_version": keras.__version__,
        "load_start": _load_average(),
        "config": config,
    }
    log(f"{len(args.arms)} arms x {len(args.seeds)} seeds, {args.steps} steps, "
        f"evaluations at {args.eval_steps}; backend {args.backend}")
    records = [header]
    pool = ModelPool(args, data, reuse=not args.no_reuse)
    start = time.perf_counter()
    # Seeds outermost and arms interleaved, so that machine load drifts hit
    # every arm alike; results are written after every run.
    for seed in args.seeds:
        for arm in args.arms:
            run_records, _ = run_one(arm, seed, args, data, evaluator, log, pool)
            records.extend(run_records)
            header["wall_seconds"] = time.perf_counter() - start
            header["load_end"] = _load_average()
            with open(paths["json"], "w") as f:
                json.dump(records, f, indent=1)
    report(records, args, paths)
    log(f"Done in {time.perf_counter() - start:.0f} s: {paths['json']}, {paths['md']}, {paths['png']}")
    with open(paths["md"]) as f:
        log(f.read())
    return records


if __name__ == "__main__":
    main()
