"""What the examples share that is not an experiment: their flags (the
hyperparameter tables, whose sources `--help` shows), the start of a run, the
tensorflow-datasets data with its KID/FID reference, `--assignment`, the
CIFAR-10 codes' Adam, `fit`'s callbacks, and the final grid and model.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time


class Default:
    """A hyperparameter's default, where it comes from, its `--quick` value."""

    def __init__(self, value, source, quick=...):
        self.value, self.source = value, source
        self.quick = value if quick is ... else quick


def checked(kind, expected, valid=lambda value: value >= 1):
    """An argparse type: `kind(text)`, refused unless `valid` (default: >= 1)."""

    def parse(text):
        value = kind(text)
        if not valid(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value" message
    return parse


def int_list(text):
    """`"32,64,96"` (or `""`: none) as a tuple of ints."""
    return tuple(int(part) for part in str(text).split(",") if part.strip())


COUNT, SHARE = checked(int, ">= 1"), checked(float, "in [0, 1)", lambda v: 0 <= v < 1)
AT_LEAST_0 = checked(float, ">= 0", lambda value: value >= 0)
# The help text and type of every shared hyperparameter; its default and
# source are in the example's table.
FLAGS = {
    "seed": (int, "seed of weights, noise, data order and sampling"),
    "image_size": (COUNT, "side of the training images"),
    "batch_size": (COUNT, "images per training step"),
    "steps": (COUNT, "optimizer steps (rounded up to whole epochs)"),
    "eval_every": (COUNT, "steps between evaluations, grids and backups: an epoch"),
    "learning_rate": (checked(float, "> 0", lambda v: v > 0), "learning rate"),
    "warmup_steps": (checked(int, ">= 0", lambda v: v >= 0), "linear warm-up steps"),
    "weight_decay": (AT_LEAST_0, "decoupled weight decay"),
    "grad_clip": (AT_LEAST_0, "global gradient-norm clipping (0: none)"),
    "ema": (SHARE, "momentum of the weights' EMA, used for sampling"),
    "widths": (checked(int_list, "> 0", lambda v: v and min(v) > 0), "UNet widths"),
    "block_depth": (COUNT, "residual blocks per UNet resolution"),
    "attention": (int_list, "resolutions with self-attention ('' for none)"),
    "dropout": (SHARE, "dropout rate of the residual blocks"),
    "sampling_steps": (COUNT, "sampler steps of the sample grids"),
    "eval_images": (COUNT, "generated images per KID/FID evaluation"),
    "eval_real_images": (COUNT, "real images of the KID/FID reference"),
    "grid_images": (COUNT, "images per sample grid"),
    "assignment": (str, "noise assignment", ("none", "linear", "knn")),
    "k": (COUNT, "candidates per image of --assignment knn"),
    "solver": (str, "solver of --assignment linear", ("scipy", "auction")),
    "distance": (str, "distance of --assignment linear", ("l2", "sq_l2")),
    "quantize": (bool, "--assignment linear distances in float16"),
    "data_dir": (str, "tensorflow-datasets folder of the data; never downloads"),
    "inception_weights": (str, "KID/FID weights: imagenet, a weights file or none"),
}
SEED = Default(0, "any; compare arms with the same seed")
# Paper-defaults shared by the CIFAR-10 examples' tables.
PAPER1 = "paper 1, Li et al. 2024, arXiv 2406.12303"
PAPER1_ASSIGNMENT = {
    "assignment": Default("linear", PAPER1),
    "k": Default(4, "paper 2, arXiv 2505.18521, for 32x32 images"),
    "solver": Default("scipy", PAPER1 + ": scipy on the host"),
    "distance": Default("l2", PAPER1),
    "quantize": Default(True, PAPER1 + ": float16 distances"),
}
CIFAR10_EVALUATION = {
    "eval_images": Default(10_000, "this example's choice", quick=16),
    "eval_real_images": Default(50_000, "the CIFAR-10 training set", quick=256),
    "grid_images": Default(64, "this example's choice", quick=16),
}
REAL_DATA = {
    "data_dir": Default(None, "tensorflow-datasets' ~/tensorflow_datasets"),
    "inception_weights": Default("imagenet", "Keras' ImageNet weights, fetched once"),
}


def _show(value):
    return ",".join(map(str, value)) or "''" if isinstance(value, tuple) else value


def parse_args(argv, description, config, extra_flags=None, name="run", real_data=True):
    """Parses `argv` (`None`: `sys.argv[1:]`) with `config`'s defaults, for
    the flags of `FLAGS` and `extra_flags` (`{name: (type, help[, choices])}`);
    `--output` defaults to `outputs/NAME` (`_quick` added with `--quick`);
    `real_data` adds `REAL_DATA`'s flags."""
    flags, output = dict(FLAGS, **(extra_flags or {})), os.path.join("outputs", name)
    config = dict({"seed": SEED}, **(REAL_DATA if real_data else {}), **config)
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    text = "Keras backend (default: $KERAS_BACKEND, else tensorflow)"
    choices = ("tensorflow", "jax", "torch")
    parser.add_argument("--backend", choices=choices, default=backend, help=text)
    text = "a smoke run of seconds on a CPU: the --quick values (flags still win)"
    parser.add_argument("--quick", action="store_true", help=text)
    parser.add_argument("--output", help=f"output folder ({output}, {output}_quick)")
    text = "continue the run in --output from its backup, where it stopped"
    parser.add_argument("--resume", action="store_true", help=text)
    for key, default in config.items():
        kind, text, choices = (*flags[key], None)[:3]
        text += f"; default: {_show(default.value)} ({default.source})"
        if default.quick != default.value:
            text += f"; --quick: {_show(default.quick)}"
        text = text.replace("%", "%%")  # argparse formats help with %
        flag = "--" + key.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(flag, type=kind, choices=choices, help=text)
    args = parser.parse_args(argv)
    for key, default in config.items():
        if getattr(args, key) is None:
            setattr(args, key, default.quick if args.quick else default.value)
    args.output = args.output or output + ("_quick" if args.quick else "")
    if real_data and args.quick and args.image_size not in (8, 16, 32):
        parser.error("--image-size must be 8, 16 or 32 with --quick (the digits).")
    return args


def start(args):
    """Empties `OUTPUT/backup` (`--resume`: checks it holds one), selects the
    backend, imports TensorFlow (`tf.data`) without its start-up lines (the
    oneDNN notice ignores `TF_CPP_MIN_LOG_LEVEL`), seeds Keras, starts the
    clock (`args.start_time`) and returns the backup's `BackupAndRestore`."""
    path = os.path.join(args.output, "backup")
    if args.resume and not os.path.exists(f"{path}/training_metadata.json"):
        raise FileNotFoundError(f"--resume: no backup in {path!r}; run without.")
    if not args.resume and os.path.exists(path):
        print(f"Note: starting over in {args.output} (--resume continues).")
        shutil.rmtree(path)  # or `fit` would resume from it
    os.makedirs(args.output, exist_ok=True)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    stderr = os.dup(2)
    with tempfile.TemporaryFile("w+") as lines:
        os.dup2(lines.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            pass  # the library says what to install when it needs it
        except Exception:
            os.dup2(stderr, 2)
            lines.seek(0)
            sys.stderr.write(lines.read())
            raise
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)
    import keras

    import keras_immiscible as ki

    if keras.backend.backend() != args.backend:
        raise ValueError(f"--backend {args.backend}: Keras runs another already.")
    args.start_time = time.time()
    keras.utils.set_random_seed(args.seed)
    backup = ki.callbacks.BackupAndRestore(path, delete_checkpoint=False)
    args.initial_step = backup.initial_step  # 0: a new run
    if args.initial_step:
        print(f"Resuming {path} at step {args.initial_step}.", flush=True)
    return backup


def image_data(args, load, real_split="train", flip=False):
    """`(train, real, features)`: endless batches of `load` (a `ki.data`
    loader), the KID/FID reference `real_split` and Inception-V3 features
    (built now: missing weights fail at once). `--quick`: the digits in 3
    channels (a resumed tfds stream restarts, reseeded; the digits' continue)."""
    import numpy as np

    import keras_immiscible as ki

    size, batch_size = args.image_size, args.batch_size
    seed, step = args.seed, args.initial_step
    if args.quick:
        real = np.repeat(ki.data.load_digits(image_size=size), 3, axis=-1)
        train = ki.data.from_numpy(real, batch_size, seed=seed).repeat().skip(step)
        return train, real, ki.metrics.digits_feature_extractor()
    options = {"image_size": size, "data_dir": args.data_dir}
    train = load(batch_size=batch_size, flip=flip, seed=seed + step, **options)
    options.update(shuffle=False, cache=False, drop_remainder=False)
    real = load(real_split, batch_size=250, **options)
    weights = None if args.inception_weights == "none" else args.inception_weights
    features = ki.metrics.InceptionFeatureExtractor(weights)
    _ = features.model  # built now
    return train.repeat(), real, features


def noise_assignment(args):
    """`--assignment`'s assigner: `None`, `KNNSelection(--k)` or
    `LinearAssignment` with the example's `--solver`, `--distance` and
    `--quantize` (those it lacks: the library's defaults)."""
    import keras_immiscible as ki

    if args.assignment != "linear":
        return ki.assignment.KNNSelection(args.k) if args.assignment == "knn" else None
    names = {"solver": "solver", "metric": "distance", "quantize": "quantize"}
    options = {key: getattr(args, n) for key, n in names.items() if hasattr(args, n)}
    return ki.assignment.LinearAssignment(**options)


def adam(args):
    """The CIFAR-10 codes' Adam: `--learning-rate` after `--warmup-steps` of
    linear warm-up, `--grad-clip` (if the table has it), an `--ema` EMA."""
    import keras

    rate, steps = args.learning_rate, args.warmup_steps
    if steps:  # cosine decay with alpha 1: constant after the warm-up
        cosine = keras.optimizers.schedules.CosineDecay
        rate = cosine(0.0, 1, alpha=1.0, warmup_target=rate, warmup_steps=steps)
    clip = getattr(args, "grad_clip", 0) or None
    return keras.optimizers.Adam(
        rate, global_clipnorm=clip, use_ema=True, ema_momentum=args.ema
    )


def fit_options(model, args, backup, real, features):
    """`fit`'s epochs (of `--eval-every` steps), verbosity (a progress bar on
    a terminal) and callbacks: KID/FID against `real`, a grid in
    `OUTPUT/samples`, step and wall time, `log.csv`, `backup` (before the
    checkpoint: a NaN stops `fit` there) and `checkpoints/last.keras`."""
    import keras

    import keras_immiscible as ki

    def log_step_and_time(epoch, logs):
        logs["step"] = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        logs["wall_time"] = round(time.time() - args.start_time, 2)

    callbacks = [
        ki.callbacks.GenerativeEvaluation(
            real,
            metrics=["kid", "fid"],
            num_images=args.eval_images,
            steps=getattr(args, "eval_sampling_steps", args.sampling_steps),
            seed=args.seed,
            batch_size=min(250, args.eval_images),
            num_real_images=getattr(args, "eval_real_images", None),
            feature_extractor=features,
            verbose=0,
        ),
        ki.callbacks.SampleGrid(
            os.path.join(args.output, "samples", "epoch_{epoch:04d}.png"),
            num_images=args.grid_images,
            steps=args.sampling_steps,
            seed=args.seed,
            scale=max(1, 32 // args.image_size),
        ),
        keras.callbacks.LambdaCallback(on_epoch_end=log_step_and_time),
        keras.callbacks.CSVLogger(f"{args.output}/log.csv", append=args.resume),
        backup,
        keras.callbacks.ModelCheckpoint(f"{args.output}/checkpoints/last.keras"),
    ]
    epochs, verbose = -(-args.steps // args.eval_every), 2 - sys.stdout.isatty()
    return dict(
        epochs=epochs,
        steps_per_epoch=args.eval_every,
        verbose=verbose,
        callbacks=callbacks,
    )


def finish(model, args):
    """Saves a grid of the EMA weights' samples as `OUTPUT/samples.png` and
    the model as `model.keras`, prints one summary line and returns
    `{"model", "initial_step"}`."""
    import keras

    from keras_immiscible.utils.images import save_image_grid

    samples = model.generate(
        args.grid_images, steps=args.sampling_steps, seed=args.seed
    )
    path = os.path.join(args.output, "samples.png")
    save_image_grid(samples, path, scale=max(1, 32 // args.image_size))
    model.save(os.path.join(args.output, "model.keras"))
    history = getattr(model.history, "history", None) or {}
    step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    keys = [key for key in ("val_kid", "val_fid") if history.get(key)]
    scores = ", ".join(f"{key[4:].upper()} {history[key][-1]:.4g}" for key in keys)
    seconds = time.time() - args.start_time
    scores = scores or "no new KID/FID"
    print(f"Trained {type(model).__name__} to step {step} in {seconds:.0f} s; ", end="")
    print(f"{scores}. Samples: {path}.", flush=True)
    return {"model": model, "initial_step": args.initial_step}
