"""Training and evaluation of the convergence benchmark (one run at a time).

A *cell* is (image size, family, arm); a *run* is a cell and a training
seed. For a seed, every arm starts from the same initial weights and sees
the same batches; only the noise assignment differs. At each evaluation
step the optimizer's EMA weights generate `num_samples` images from the
same sampling seed at every sampler-step count, and their FID against the
held-out digits is recorded. KNN arms are also sampled from the Gaussian
matched to the noise they trained on (`generate(initial_noise="matched")`).

Used by `benchmarks/convergence.py`; see its docstring for the command line.
"""

import fcntl
import json
import os
import time

SIZES = (8, 16, 32)
FAMILIES = ("ddim", "flow")
# The arms: plain noise, exact linear assignment (scipy), KNN with k
# candidates. Records store them as `method` ("vanilla", "linear", "knn")
# and `k` (None unless knn).
ARM_NAMES = ("vanilla", "linear", "knn2", "knn4", "knn8")

# Networks small enough for 2 CPU cores (TensorFlow, batch 128, measured on
# the shared machine: 16x16 ~110 ms per training step, 32x32 ~200 ms).
NETWORKS = {
    8: dict(widths=(16, 32), block_depth=1),
    16: dict(widths=(16, 32), block_depth=1),
    32: dict(widths=(8, 16, 32), block_depth=1),
}

# The default grid, in the order it runs (16x16 and 32x32 first: the
# papers' regime; 8x8 last, the out-of-regime reference).
DEFAULT_GRID = (
    [(16, f, a) for f in FAMILIES for a in ("vanilla", "linear", "knn4")]
    + [(32, f, a) for f in FAMILIES for a in ("vanilla", "linear", "knn4")]
    + [(16, f, a) for f in FAMILIES for a in ("knn2", "knn8")]
    + [(8, f, a) for f in FAMILIES for a in ("vanilla", "linear", "knn4")]
)


def arm_method(arm):
    """("vanilla" | "linear" | "knn", k or None) of an arm name."""
    if arm.startswith("knn"):
        return "knn", int(arm[3:])
    return arm, None


def arm_name(method, k):
    return f"knn{k}" if method == "knn" else method


def run_key(record):
    """What identifies a run in the records."""
    return (
        record["image_size"],
        record["family"],
        arm_name(record["method"], record["k"]),
        record["seed"],
    )


# ---------------------------------------------------------------- records


class RecordsFile:
    """The JSON list of flat records, shared by processes: every write
    re-reads the file under an exclusive lock and appends."""

    def __init__(self, path):
        self.path = path
        self.lock_path = path + ".lock"

    def read(self):
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return json.load(f)

    def append(self, new_records):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self.read() + list(new_records)
            temporary = self.path + f".{os.getpid()}.tmp"
            with open(temporary, "w") as f:
                json.dump(records, f, indent=0)
                f.write("\n")
            os.replace(temporary, self.path)
            fcntl.flock(lock, fcntl.LOCK_UN)
        return records


def completed_runs(records, eval_steps_by_size):
    """Keys of the runs whose records reach their final evaluation step."""
    done = set()
    for r in records:
        if r.get("header"):
            continue
        final = eval_steps_by_size.get(r["image_size"], [None])[-1]
        if r["step"] == final:
            done.add(run_key(r))
    return done


# ------------------------------------------------------------------ data


def load_data(image_size):
    """Train and reference digits at `image_size` (nearest upsampling)."""
    import keras_immiscible as ki

    train = ki.data.load_digits(split="train", image_size=image_size)
    test = ki.data.load_digits(split="test", image_size=image_size)
    return train, test


def feature_extractor(image_size):
    """The digits classifier's features: one feature space for every image
    size (the extractor averages upsampled digits back to 8x8, which undoes
    nearest upsampling exactly)."""
    from keras_immiscible.metrics import digits_feature_extractor

    return "digits" if image_size == 8 else digits_feature_extractor()


class BatchStream:
    """The data order of one seed: consecutive epochs, each a fresh
    permutation, cut into full batches (which may straddle epochs)."""

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


# ----------------------------------------------------------------- models


def make_optimizer(lr, ema_momentum, ema_warmup):
    """`ki.optimizers.AdamW` (EMA with warm-up) that leaves the training
    weights alone at the end of `fit`.

    The benchmark trains in segments (one `fit` per evaluation interval) and
    evaluates with `ema_weights(model)`; Keras' `finalize_variable_values`
    would copy the average into the model after every segment, i.e. restart
    training from the EMA weights.
    """
    import keras_immiscible as ki

    class SegmentAdamW(ki.optimizers.AdamW):
        def finalize_variable_values(self, var_list):
            pass

    return SegmentAdamW(
        learning_rate=lr,
        use_ema=True,
        ema_momentum=ema_momentum,
        ema_warmup=ema_warmup,
    )


def make_model(image_size, family, arm, seed):
    """An uncompiled model whose initial weights and noise seed depend on
    `seed` only (the same initial weights for every arm)."""
    import keras

    import keras_immiscible as ki

    method, k = arm_method(arm)
    assigner = None
    if method == "linear":
        assigner = ki.assignment.LinearAssignment(solver="scipy")
    elif method == "knn":
        assigner = ki.assignment.KNNSelection(k=k)
    keras.utils.set_random_seed(seed)
    network = ki.layers.UNet(
        image_shape=(image_size, image_size, 1), **NETWORKS[image_size]
    )
    if family == "ddim":
        # Epsilon target, cosine schedule, DDIM (eta = 0): the defaults.
        return ki.ImmiscibleDiffusion(network, assignment=assigner, seed=seed)
    # Straight path, velocity target, uniform times, Euler: the defaults.
    return ki.ImmiscibleFlowMatching(network, assignment=assigner, seed=seed)


class ModelPool:
    """One compiled model per cell, reset to a fresh seed's state for each
    run, so that the step and the sampler compile once per cell.

    Resetting copies every variable of a freshly built model of that seed
    (weights, noise seed state, tracked noise moments) into the compiled
    model and restores the optimizer's variables to their state right
    after `optimizer.build`.
    """

    def __init__(self, args):
        self.args = args
        self.models = {}

    def get(self, image_size, family, arm, seed):
        import warnings

        import keras

        key = (image_size, family, arm)
        if key not in self.models:
            model = make_model(image_size, family, arm, seed)
            with warnings.catch_warnings():
                # TensorFlow: the host solver compiles without XLA (speed
                # only; this benchmark counts steps).
                warnings.filterwarnings("ignore", message=".*on the host.*")
                model.compile(
                    optimizer=make_optimizer(
                        self.args.lr, self.args.ema_momentum, self.args.ema_warmup
                    )
                )
            model.optimizer.build(model.trainable_variables)
            snapshot = [keras.ops.copy(v.value) for v in model.optimizer.variables]
            self.models[key] = (model, snapshot)
            return model
        model, snapshot = self.models[key]
        fresh = make_model(image_size, family, arm, seed)
        if len(fresh.variables) != len(model.variables):
            raise RuntimeError("cannot reset the model: variable lists differ.")
        for target, source in zip(model.variables, fresh.variables):
            target.assign(keras.ops.copy(source.value))
        for variable, value in zip(model.optimizer.variables, snapshot):
            variable.assign(keras.ops.copy(value))
        return model


# ------------------------------------------------------------- evaluation


class Evaluator:
    """FID of a model's EMA samples at several sampler-step counts against
    fixed reference features (extracted once per image size)."""

    def __init__(self, reference, image_size, args):
        from keras_immiscible.metrics import FID
        from keras_immiscible.metrics.evaluate import add_real_images

        self.fid = FID(batch_size=512, feature_extractor=feature_extractor(image_size))
        add_real_images([self.fid], reference, 512, verbose=0)
        self.args = args

    def __call__(self, model, initial_noise="standard"):
        """{sampling_steps: fid}."""
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
                    initial_noise=initial_noise,
                    verbose=0,
                )
                update_metrics([self.fid], images, "generated", "generated_images")
                out[steps] = float(self.fid.result())
        return out


def noise_statistics(model):
    """Summary of the tracked per-pixel moments of the training noise."""
    import numpy as np

    mean = model.noise_mean.astype("float64")
    std = model.noise_std.astype("float64")
    return {
        "noise_mean_avg": float(mean.mean()),
        "noise_mean_rms": float(np.sqrt(np.mean(mean**2))),
        "noise_std_avg": float(std.mean()),
    }


def run_one(image_size, family, arm, seed, args, data, evaluator, pool, log):
    """Trains one run; returns its records (one per evaluation step,
    sampler-step count and initial noise)."""
    import keras

    method, k = arm_method(arm)
    model = pool.get(image_size, family, arm, seed)
    stream = BatchStream(data[0], args.batch_size, seed)
    eval_steps = args.eval_steps[image_size]
    records, done = [], 0
    for step in eval_steps:
        batches = step - done
        start = time.perf_counter()
        cpu = time.process_time()
        history = model.fit(
            stream.take(batches),
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
        results = {"standard": evaluator(model)}
        if method == "knn" and args.matched:
            results["matched"] = evaluator(model, initial_noise="matched")
        eval_seconds = time.perf_counter() - start
        common = {
            "image_size": image_size,
            "family": family,
            "method": method,
            "k": k,
            "seed": seed,
            "step": step,
            "loss": logs.get("loss"),
            "assignment_gain": logs.get("assignment_gain"),
            "backend": keras.backend.backend(),
            "batch_size": args.batch_size,
            "invocation": args.invocation,
            "train_ms_per_step": 1000.0 * train_seconds / batches,
            "train_cpu_ms_per_step": 1000.0 * train_cpu / batches,
            "eval_seconds": eval_seconds,
        }
        common.update(noise_statistics(model))
        for initial_noise, fids in results.items():
            for sampling_steps, fid in fids.items():
                records.append(
                    dict(
                        common,
                        sampling_steps=sampling_steps,
                        fid=fid,
                        initial_noise=initial_noise,
                    )
                )
        fids = " ".join(f"{s}:{v:.2f}" for s, v in results["standard"].items())
        matched = results.get("matched")
        extra = ""
        if matched:
            extra = " matched " + " ".join(f"{s}:{v:.2f}" for s, v in matched.items())
        log(
            f"  {image_size}px {family} {arm} seed {seed} step {step}: fid {fids}{extra}"
            f"  gain {common['assignment_gain']:.4f}"
            f" ({common['train_ms_per_step']:.0f} ms/step, eval {eval_seconds:.0f} s)"
        )
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if iterations != eval_steps[-1]:
        raise RuntimeError(
            f"{arm} seed {seed}: {iterations} optimizer steps, expected {eval_steps[-1]}."
        )
    return records
