"""Command-line plumbing shared by the example scripts (not an experiment).

Each example declares its hyperparameters as a table, `{name: Default(value,
source, quick=...)}`: the value, where it comes from (paper, code, this
library's choice) and its `--quick` value. `parse_args` turns the table into
flags whose `--help` shows the sources, fills the unset flags from it (the
`--quick` column with `--quick`) and rejects values that cannot work. The
experiment itself (data set, network, model, optimizer, `fit`) is in each
example's own file; this module holds what every example does the same way:

- `start`: backend (`select_backend`, before Keras is imported), seed,
  clock and the `--resume` backup (`backup_dir`).
- `image_data`: a tensorflow-datasets set and its KID/FID reference on
  Inception-V3, or with `--quick` the digits on `digits_features`.
- `noise_assignment` (`--assignment`), `warmup` (the learning rate),
  `evaluation_callbacks` (KID/FID, grids, step and time, `log.csv`),
  `fit_options` (epochs of `--eval-every` steps) and `finish` (final grid,
  `model.keras`, the summary line).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time


class Default:
    """A hyperparameter's default, where it comes from, its `--quick` value."""

    _SAME = object()

    def __init__(self, value, source, quick=_SAME):
        self.value = value
        self.source = source
        self.quick = value if quick is Default._SAME else quick


def int_list(text):
    """Parses `"32,64,96"` (or `""` for none) into a tuple of ints."""
    text = str(text).strip()
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


# The help text, type and choices of every hyperparameter an example may
# have. Its default and source are in the example's table.
FLAGS = {
    "image_size": (int, "side of the training images", None),
    "batch_size": (int, "images per training step", None),
    "steps": (int, "optimizer steps (rounded up to whole epochs)", None),
    "eval_every": (
        int,
        "steps between KID/FID evaluations, sample grids and backups (one Keras epoch)",
        None,
    ),
    "learning_rate": (float, "learning rate (after the warm-up)", None),
    "warmup_steps": (int, "linear learning-rate warm-up, in steps", None),
    "weight_decay": (float, "decoupled weight decay", None),
    "grad_clip": (float, "global gradient-norm clipping (0: none)", None),
    "ema": (float, "momentum of the weights' EMA, used for sampling", None),
    "ema_warmup": (
        float,
        "EMA warm-up: momentum min(ema, (1 + t) / "
        "(ema_warmup + t)) at step t (0: constant)",
        None,
    ),
    "widths": (int_list, "UNet channels per resolution", None),
    "block_depth": (int, "residual blocks per UNet resolution", None),
    "attention": (int_list, "resolutions with self-attention ('' for none)", None),
    "num_heads": (int, "heads of the attention blocks", None),
    "dropout": (float, "dropout rate of the residual blocks", None),
    "sampling_steps": (int, "sampler steps of the sample grids", None),
    "eval_sampling_steps": (int, "sampler steps of the KID/FID samples", None),
    "eval_images": (int, "generated images per KID/FID evaluation", None),
    "eval_real_images": (int, "real images of the KID/FID reference", None),
    "grid_images": (int, "images per sample grid", None),
    "assignment": (
        str,
        "noise assignment: none (plain training), linear (paper 1) or knn (paper 2)",
        ("none", "linear", "knn"),
    ),
    "k": (int, "candidates per image of --assignment knn", None),
    "solver": (str, "solver of --assignment linear", ("scipy", "auction")),
    "distance": (str, "distance of --assignment linear", ("l2", "sq_l2")),
    "quantize": (bool, "--assignment linear distances in float16", None),
}
POSITIVE = """image_size batch_size steps eval_every block_depth num_heads
sampling_steps eval_sampling_steps eval_images eval_real_images grid_images
k""".split()


def _show(value):
    return ",".join(map(str, value)) or "''" if isinstance(value, tuple) else value


def parse_args(
    argv,
    description,
    config,
    extra_flags=None,
    output_name="run",
    real_data=True,
):
    """Parses `argv` into an `argparse.Namespace`, defaults from `config`.

    Args:
        argv: the arguments (`None`: `sys.argv[1:]`).
        description: the example's docstring, shown by `--help`.
        config: `{name: Default}`, the example's hyperparameters.
        extra_flags: `{name: (type, help, choices)}` for the example's own
            hyperparameters (in addition to `FLAGS`).
        output_name: the default output folder is `outputs/NAME` (`_quick` added
            with `--quick`).
        real_data: add `--data-dir` and `--inception-weights`.
    """
    flags = dict(FLAGS, **(extra_flags or {}))
    default_output = os.path.join("outputs", output_name)
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backend",
        choices=("tensorflow", "jax", "torch"),
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of seconds on a CPU: the --quick values below "
        "(explicit flags still win)",
    )
    parser.add_argument(
        "--output",
        help=f"output folder (default: {default_output}, {default_output}_quick)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output from its backup, where it stopped",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of weights, noise, data order and sampling (default: 0)",
    )
    if real_data:
        parser.add_argument(
            "--data-dir",
            help="tensorflow-datasets folder where the data "
            "is prepared (default: ~/tensorflow_datasets); never downloads",
        )
        parser.add_argument(
            "--inception-weights",
            default="imagenet",
            help="Inception-V3 weights of KID/FID: imagenet (downloaded once "
            "by Keras), a local InceptionV3(include_top=False) weights file, "
            "or none (random weights: smoke tests only)",
        )
    for name, default in config.items():
        kind, text, choices = flags[name]
        text += f"; default: {_show(default.value)} ({default.source})"
        if default.quick != default.value:
            text += f"; --quick: {_show(default.quick)}"
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(flag, type=kind, choices=choices, help=text)
    args = parser.parse_args(argv)
    for name, default in config.items():
        if getattr(args, name) is None:
            setattr(args, name, default.quick if args.quick else default.value)
    if args.output is None:
        args.output = default_output + ("_quick" if args.quick else "")
    _check(args, parser)
    return args


def _check(args, parser):
    """Rejects values that cannot work, naming the flag."""

    def bad(name, expected):
        value = getattr(args, name)
        parser.error(
            f"--{name.replace('_', '-')} must be {expected}, got {_show(value)}."
        )

    for name in POSITIVE:
        if getattr(args, name, 1) < 1:
            bad(name, ">= 1")
    for name in ("warmup_steps", "weight_decay", "grad_clip"):
        if getattr(args, name, 0) < 0:
            bad(name, ">= 0")
    if not getattr(args, "learning_rate", 1) > 0:
        bad("learning_rate", "> 0")
    if not 0 <= getattr(args, "ema", 0) < 1:
        bad("ema", "in [0, 1)")
    if getattr(args, "ema_warmup", 0) not in (0,) and args.ema_warmup < 1:
        bad("ema_warmup", "0 (none) or >= 1")
    if not 0 <= getattr(args, "dropout", 0) < 1:
        bad("dropout", "in [0, 1)")
    if hasattr(args, "widths") and (not args.widths or min(args.widths) < 1):
        bad("widths", "positive integers")
    if args.quick and args.image_size not in (8, 16, 32):
        bad("image_size", "8, 16 or 32 with --quick (the digits, upsampled)")


def select_backend(backend):
    """Selects the Keras backend (before Keras is imported) and imports
    TensorFlow (every backend uses it for `tf.data`) without its start-up
    lines: `TF_CPP_MIN_LOG_LEVEL=2` (unless set) hides its INFO and WARNING
    logs, and the oneDNN notice, which TensorFlow 2.21 prints whatever that
    variable says, goes to a temporary file (printed if the import fails)."""
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise ValueError(
                f"--backend {backend}: Keras is already imported with the "
                f"{keras.backend.backend()} backend in this process."
            )
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
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


def backup_dir(args):
    """`OUTPUT/backup`, the folder of `ki.callbacks.BackupAndRestore`.

    With `--resume` it must hold a backup. Without, a backup left there by
    an earlier run is removed (`fit` would resume from it otherwise).
    """
    path = os.path.join(args.output, "backup")
    has_backup = os.path.exists(os.path.join(path, "training_metadata.json"))
    if args.resume and not has_backup:
        raise FileNotFoundError(
            f"--resume: no backup in {path!r}. Run without --resume first "
            "(with the same --output)."
        )
    if not args.resume and os.path.exists(path):
        print(
            f"Note: starting over in {args.output} (--resume continues the run there).",
            flush=True,
        )
        shutil.rmtree(path)
    os.makedirs(args.output, exist_ok=True)
    return path


def digits_features(image_size):
    """KID/FID features of the digits upsampled to `image_size` (any
    channels): each image is averaged over its upsampling blocks and
    channels, which gives back the 8x8 digit of a nearest upsampling
    exactly, then mapped to the 64 penultimate features of the library's
    digits classifier (`ki.metrics.digits_feature_extractor`)."""
    import keras_immiscible as ki

    classifier = ki.metrics.digits_feature_extractor()
    factor = image_size // 8

    def features(images):
        x = ki.metrics.feature_extractors.images_to_unit_float(images, "x")
        n, channels = x.shape[0], x.shape[-1]
        x = x.reshape(n, 8, factor, 8, factor, channels).mean(axis=(2, 4, 5))
        return classifier(x[..., None])

    return ki.metrics.CallableFeatureExtractor(features, batch_size=256)


def start(args):
    """Selects the backend, seeds Keras, starts the clock (`args.start_time`)
    and returns the run's `ki.callbacks.BackupAndRestore` (in `backup_dir`),
    noting the step it resumes at in `args.initial_step` (0: a new run)."""
    select_backend(args.backend)
    import keras

    import keras_immiscible as ki

    args.start_time = time.time()
    keras.utils.set_random_seed(args.seed)
    backup = ki.callbacks.BackupAndRestore(backup_dir(args), delete_checkpoint=False)
    args.initial_step = backup.initial_step  # > 0: --resume continues there
    return backup


def image_data(args, load, real_split="train", flip=False):
    """`(train, real, features)`: endless training batches of `load`'s
    default split (a `ki.data` loader, at `--image-size`, flipped at random
    with `flip`), the KID/FID reference `real_split` and its Inception-V3
    features (built now: missing weights fail before training). `--quick`:
    the embedded digits in 3 channels, scored on the digits classifier. A
    resumed run continues the digits' stream exactly; the tensorflow-datasets
    shuffle cannot be positioned, so it reshuffles."""
    import numpy as np

    import keras_immiscible as ki

    size, batch_size, seed = args.image_size, args.batch_size, args.seed
    initial_step = args.initial_step
    if args.quick:
        real = np.repeat(ki.data.load_digits(image_size=size), 3, axis=-1)
        train = ki.data.from_numpy(real, batch_size, seed=seed)
        return train.repeat().skip(initial_step), real, digits_features(size)
    options = {"image_size": size, "data_dir": args.data_dir}
    train = load(batch_size=batch_size, flip=flip, seed=seed + initial_step, **options)
    real = load(
        real_split,
        batch_size=250,
        shuffle=False,
        cache=False,
        drop_remainder=False,
        **options,
    )
    weights = args.inception_weights
    features = ki.metrics.InceptionFeatureExtractor(
        None if weights == "none" else weights
    )
    _ = features.model  # built now: missing weights fail before training
    return train.repeat(), real, features


def noise_assignment(args):
    """The assigner of `--assignment`: `None` (plain training),
    `KNNSelection(k=--k)` or `LinearAssignment` with `--solver`,
    `--distance` and `--quantize` where the example has them (else the
    library's defaults: exact scipy solver, squared L2)."""
    import keras_immiscible as ki

    if args.assignment != "linear":
        return (
            ki.assignment.KNNSelection(k=args.k) if args.assignment == "knn" else None
        )
    names = {"solver": "solver", "metric": "distance", "quantize": "quantize"}
    options = {key: getattr(args, name, None) for key, name in names.items()}
    return ki.assignment.LinearAssignment(
        **{key: value for key, value in options.items() if value is not None}
    )


def warmup(args):
    """`--learning-rate` after a linear warm-up from 0 over `--warmup-steps`."""
    import keras

    learning_rate, steps = args.learning_rate, args.warmup_steps
    if not steps:
        return learning_rate
    cosine = keras.optimizers.schedules.CosineDecay  # alpha 1: then constant
    return cosine(0.0, 1, alpha=1.0, warmup_target=learning_rate, warmup_steps=steps)


def evaluation_callbacks(args, model, real, features):
    """What every example does at the end of an epoch (`--eval-every` steps),
    in this order: KID/FID (`val_kid`, `val_fid`, with the EMA weights) on
    `--eval-images` samples of `--eval-sampling-steps` (else
    `--sampling-steps`) steps against `real` (`--eval-real-images` of them,
    else all), a sample grid in `OUTPUT/samples`, the optimizer step and the
    wall time into the logs, and `OUTPUT/log.csv`."""
    import keras

    import keras_immiscible as ki

    def log_step_and_time(epoch, logs):
        logs["step"] = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        logs["wall_time"] = round(time.time() - args.start_time, 2)

    grids = os.path.join(args.output, "samples", "epoch_{epoch:04d}.png")
    return [
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
            grids,
            num_images=args.grid_images,
            steps=args.sampling_steps,
            seed=args.seed,
            scale=max(1, 32 // args.image_size),
        ),
        keras.callbacks.LambdaCallback(on_epoch_end=log_step_and_time),
        keras.callbacks.CSVLogger(
            os.path.join(args.output, "log.csv"), append=args.resume
        ),
    ]


def fit_options(args):
    """`fit`'s `epochs`, `steps_per_epoch` and `verbose`: a Keras epoch is
    `--eval-every` steps, `--steps` rounded up to whole epochs; a progress
    bar on a terminal, a line per epoch elsewhere."""
    epochs, verbose = -(-args.steps // args.eval_every), 2 - sys.stdout.isatty()
    return dict(epochs=epochs, steps_per_epoch=args.eval_every, verbose=verbose)


def finish(model, args):
    """Generates `--grid-images` with the EMA weights (`fit` leaves them in
    the model), saves their grid (`OUTPUT/samples.png`) and the model
    (`OUTPUT/model.keras`), prints the run's summary line (step, time, last
    KID/FID) and returns `main`'s result: the model, the step it resumed at."""
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
    scores = [
        f"{name} {history[key][-1]:.4g}"
        for name, key in (("KID", "val_kid"), ("FID", "val_fid"))
        if history.get(key)
    ]
    print(
        f"Trained {type(model).__name__} to step {step} in "
        f"{time.time() - args.start_time:.0f} s; "
        f"{', '.join(scores) or 'no new KID/FID'}. Samples: {path}.",
        flush=True,
    )
    return {"model": model, "initial_step": args.initial_step}
