"""Shared plumbing of the example scripts in this folder.

Every example (`train_digits.py`, `ddim_cifar10.py`, `flow_matching_cifar10.py`,
`consistency_cifar10.py`, `ddim_oxford_flowers.py`) is one experiment: it
declares its configuration (each default with its source) and a function that
builds the model; this module does the rest the same way for all of them:

- command line: the flags of the configuration plus `--backend`, `--quick`,
  `--output`, `--data-dir`, `--resume`, `--seed`, `--assignment`, `--k`, ...;
  `--quick` swaps in a tiny configuration (embedded digits, tiny UNet, a few
  steps) that runs in well under a minute on a CPU;
- data: the tensorflow-datasets loaders of `keras_immiscible.data` (never
  downloading: missing data raises `DatasetNotPreparedError` at once, before
  anything is built), or the embedded digits as a stand-in (`--dataset digits`,
  the `--quick` default), upsampled to the image size and tiled to the
  experiment's channels;
- evaluation: KID and FID every `--eval-every` steps with
  `keras_immiscible.callbacks.GenerativeEvaluation`, on Inception-V3 features
  (ImageNet weights, which the real runs need and check up front) or, for the
  digits stand-in, on the embedded digits classifier;
- outputs, in `--output`: `log.csv` (`keras.callbacks.CSVLogger`: epoch,
  step, loss, assignment_gain, val_kid, val_fid, wall_time), sample grids
  `samples/epoch_NNNN.png` and the final `samples.png`, the checkpoint
  `checkpoints/last.keras` (written every `--eval-every` steps), the backup
  `backup/` of `keras_immiscible.callbacks.BackupAndRestore` (written at the
  same points) and the final model `model.keras` (EMA weights when the
  optimizer keeps them);
- `--resume`: continues from `backup/` with `BackupAndRestore`, the
  library's fault-tolerance mechanism (weights, optimizer state with its
  step counter and EMA weights, the model's seed state, metric states),
  training the model of `checkpoints/last.keras` (whose class `--resume`
  checks against the flags). The digits stand-in's batches continue where
  they stopped, so a resumed run is the uninterrupted run, bit for bit on a
  deterministic backend; the tensorflow-datasets loaders cannot be
  positioned, and reshuffle with `--seed` + the resumed epoch instead.

A Keras "epoch" here is `--eval-every` training steps on a repeated data set,
so `--steps` counts optimizer updates, as the papers do.
"""

import argparse
import math
import os
import shutil
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
ASSIGNMENTS = ("none", "linear", "knn")
CHECKPOINT = os.path.join("checkpoints", "last.keras")
BACKUP = "backup"
LOG = "log.csv"
FINAL_MODEL = "model.keras"
FINAL_SAMPLES = "samples.png"
SAMPLES_PATTERN = os.path.join("samples", "epoch_{epoch:04d}.png")

# tensorflow-datasets data sets: loader name in `keras_immiscible.data`, the
# split the images for KID/FID come from, and the channels.
TFDS_DATASETS = {
    "cifar10": {
        "loader": "load_cifar10",
        "eval_split": "train",  # FID against the training set, as in the papers
        "channels": 3,
    },
    "oxford_flowers": {
        "loader": "load_oxford_flowers",
        # The held-out 20% of every official split: the keras.io DDIM
        # example's validation set, on which it computes KID.
        "eval_split": "train[80%:]+validation[80%:]+test[80%:]",
        "channels": 3,
    },
}
STAND_IN = "digits"


class Default:
    """A flag's default, where it comes from, and its `--quick` value."""

    _NONE = object()

    def __init__(self, value, source, quick=_NONE):
        self.value = value
        self.source = source
        self.quick = value if quick is Default._NONE else quick


def int_list(text):
    """Parses `"32,64,96"` (or `""`) into a tuple of ints."""
    text = str(text).strip()
    if text in ("", "none", "()"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


# Every flag an experiment may configure: (type, help, choices).
FLAGS = {
    "dataset": (
        str,
        "training data; 'digits' is the embedded stand-in (no network)",
        None,
    ),
    "image_size": (
        int,
        (
            "side of the training images (a multiple of 8 for "
            "the digits stand-in)"
        ),
        None,
    ),
    "flip": (bool, "random horizontal flips of the training images", None),
    "batch_size": (int, "images per training step", None),
    "steps": (
        int,
        (
            "training steps (optimizer updates), rounded up to a "
            "multiple of --eval-every"
        ),
        None,
    ),
    "eval_every": (
        int,
        (
            "steps between KID/FID evaluations, sample grids and "
            "checkpoints (one Keras epoch)"
        ),
        None,
    ),
    "optimizer": (str, "optimizer", ("adam", "adamw")),
    "learning_rate": (float, "learning rate (after warm-up)", None),
    "warmup_steps": (
        int,
        "linear learning-rate warm-up from 0, in steps (0: none)",
        None,
    ),
    "weight_decay": (float, "decoupled weight decay (0: none)", None),
    "grad_clip": (float, "global gradient-norm clipping (0: none)", None),
    "ema": (
        float,
        (
            "momentum of the weights' exponential moving average, "
            "used for sampling and evaluation (0: no EMA)"
        ),
        None,
    ),
    "ema_warmup": (
        float,
        (
            "warm-up of the EMA momentum, min(ema, (1 + t) / (warmup + t)) "
            "at step t (ki.optimizers.AdamW; 0: Keras' constant momentum; "
            "--optimizer adamw only)"
        ),
        None,
    ),
    "widths": (int_list, "UNet channels per resolution, comma-separated", None),
    "block_depth": (int, "residual blocks per UNet resolution", None),
    "attention": (
        int_list,
        "resolutions with self-attention, comma-separated ('' for none)",
        None,
    ),
    "dropout": (float, "dropout rate of the residual blocks", None),
    "loss": (str, "training loss", None),
    "sampling_steps": (int, "sampler steps of the sample grids", None),
    "eval_sampling_steps": (int, "sampler steps of the KID/FID samples", None),
    "eval_images": (int, "generated images per KID/FID evaluation", None),
    "eval_real_images": (int, "real images of the KID/FID reference set", None),
    "grid_images": (int, "images per sample grid", None),
    "assignment": (
        str,
        (
            "noise assignment: none (plain training), linear "
            "(paper 1) or knn (paper 2)"
        ),
        ASSIGNMENTS,
    ),
    "k": (int, "candidates per image of --assignment knn", None),
    "solver": (str, "solver of --assignment linear", ("scipy", "auction")),
    "distance": (
        str,
        "image-noise distance of --assignment linear",
        ("l2", "sq_l2"),
    ),
    "quantize": (
        bool,
        "compute the --assignment linear distances in float16",
        None,
    ),
}


def _describe(default):
    if isinstance(default.value, tuple):
        value = ",".join(str(v) for v in default.value) or "''"
    else:
        value = default.value
    text = f"default: {value} ({default.source})"
    if default.quick != default.value:
        quick = default.quick
        if isinstance(quick, tuple):
            quick = ",".join(str(v) for v in quick) or "''"
        text += f"; --quick: {quick}"
    return text


def build_parser(description, config, extra_flags=None, datasets=()):
    """The argument parser of an example.

    Args:
        description: the example's module docstring.
        config: `{name: Default}`, the experiment's configuration.
        extra_flags: `{name: (type, help, choices)}` for flags of this
            example only (their defaults are in `config` too).
        datasets: the values `--dataset` accepts.
    """
    flags = dict(FLAGS)
    flags.update(extra_flags or {})
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow); set "
        "before Keras is imported",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run: embedded digits, tiny UNet, a few steps (the "
        "--quick values below); explicit flags still win",
    )
    parser.add_argument("--output", default=None, help="output folder")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="tensorflow-datasets data directory (default: $TFDS_DATA_DIR "
        "or ~/tensorflow_datasets); the data must be prepared there, "
        "nothing is downloaded",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"continue from OUTPUT/{BACKUP} (the backup of the last "
        "evaluation) exactly where it stopped",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of weights, noise, data order and sampling (default: 0)",
    )
    parser.add_argument(
        "--feature-extractor",
        choices=("auto", "inception", "digits"),
        default="auto",
        help="features of KID/FID (default: auto, Inception-V3 for real "
        "data and the digits classifier for the digits stand-in)",
    )
    parser.add_argument(
        "--inception-weights",
        default="imagenet",
        help="Inception-V3 weights: 'imagenet' (downloaded once by Keras "
        "into ~/.keras/models), the path of a local "
        "InceptionV3(include_top=False) weights file, or 'none' (random "
        "weights: smoke tests only, the scores mean nothing)",
    )
    for name, default in config.items():
        if name not in flags:
            raise ValueError(f"No flag is defined for the config key {name!r}.")
        kind, text, choices = flags[name]
        flag = "--" + name.replace("_", "-")
        if name == "dataset":
            choices = tuple(datasets)
        help_text = f"{text}; {_describe(default)}"
        if kind is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag,
                type=kind,
                choices=choices,
                default=None,
                help=help_text,
            )
    return parser


def parse_args(
    argv,
    description,
    config,
    extra_flags=None,
    datasets=(),
    default_output=None,
):
    """Parses `argv` and fills every unset flag from `config`.

    Unset flags take the configuration's value, or its `--quick` value with
    `--quick`. Returns an `argparse.Namespace`.
    """
    parser = build_parser(description, config, extra_flags, datasets)
    args = parser.parse_args(argv)
    for name, default in config.items():
        if getattr(args, name) is None:
            setattr(args, name, default.quick if args.quick else default.value)
    if args.output is None:
        base = default_output or "outputs"
        args.output = base + "_quick" if args.quick else base
    check_args(args, parser)
    return args


def check_args(args, parser):
    """Rejects flag values that cannot work, naming the flag."""
    positive = (
        "image_size",
        "batch_size",
        "steps",
        "eval_every",
        "block_depth",
        "sampling_steps",
        "eval_sampling_steps",
        "eval_images",
        "eval_real_images",
        "grid_images",
        "k",
    )
    for name in positive:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be >= 1, got {value}."
            )
    for name in ("warmup_steps",):
        value = getattr(args, name, None)
        if value is not None and value < 0:
            parser.error(
                f"--{name.replace('_', '-')} must be >= 0, got {value}."
            )
    for name in ("learning_rate",):
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            parser.error(
                f"--{name.replace('_', '-')} must be > 0, got {value}."
            )
    for name in ("weight_decay", "grad_clip"):
        value = getattr(args, name, None)
        if value is not None and value < 0:
            parser.error(
                f"--{name.replace('_', '-')} must be >= 0, got {value}."
            )
    ema = getattr(args, "ema", None)
    if ema is not None and not 0.0 <= ema < 1.0:
        parser.error(f"--ema must be in [0, 1), got {ema}.")
    ema_warmup = getattr(args, "ema_warmup", None)
    if ema_warmup is not None and ema_warmup != 0 and not ema_warmup >= 1.0:
        parser.error(
            f"--ema-warmup must be 0 (none) or >= 1, got {ema_warmup}."
        )
    dropout = getattr(args, "dropout", None)
    if dropout is not None and not 0.0 <= dropout < 1.0:
        parser.error(f"--dropout must be in [0, 1), got {dropout}.")
    widths = getattr(args, "widths", None)
    if widths is not None and (not widths or min(widths) < 1):
        parser.error(f"--widths must be positive integers, got {widths}.")
    if getattr(args, "dataset", None) == STAND_IN and args.image_size % 8:
        parser.error(
            "--image-size must be a multiple of 8 with --dataset digits (the "
            f"8x8 digits are upsampled), got {args.image_size}."
        )


# --------------------------------------------------------------- backend


def setup_backend(backend):
    """Selects the Keras backend; must run before Keras is imported."""
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise ValueError(
                f"--backend {backend} was asked for, but Keras is already "
                f"imported with the {keras.backend.backend()} backend in "
                "this process. Set KERAS_BACKEND before importing Keras."
            )
    os.environ["KERAS_BACKEND"] = backend


def log(message):
    print(message, flush=True)


# -------------------------------------------------------------- assigner


def make_assigner(args):
    """The noise assigner of `--assignment` (and `--k`, `--solver`, ...)."""
    from keras_immiscible import assignment

    if args.assignment == "none":
        return None
    if args.assignment == "knn":
        return assignment.KNNSelection(k=args.k)
    return assignment.LinearAssignment(
        solver=args.solver, metric=args.distance, quantize=args.quantize
    )


# ------------------------------------------------------------------ data


def digits_images(image_size, channels):
    """The embedded digits, upsampled (nearest) to `image_size`, tiled to
    `channels`: (1797, S, S, C) float32 in [0, 1]."""
    import numpy as np

    import keras_immiscible as ki

    images = ki.data.load_digits()
    factor = image_size // 8
    images = np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)
    if channels > 1:
        images = np.repeat(images, channels, axis=-1)
    return np.ascontiguousarray(images)


def shuffled_batches(images, batch_size, seed, skip=0):
    """Endless `(batch,)` tuples of `images`, reshuffled every pass, the
    last incomplete batch of a pass dropped. Plain numpy: any backend.

    `skip` starts the stream after its first `skip` batches (a resumed run
    continues the stream of the uninterrupted one): the permutations of the
    skipped passes are drawn again, no image is gathered."""
    import numpy as np

    if batch_size > len(images):
        raise ValueError(
            f"--batch-size must be at most the {len(images)} images of the "
            f"data set, got {batch_size}."
        )
    rng = np.random.default_rng(seed)
    per_pass = len(images) // batch_size
    for _ in range(skip // per_pass):
        rng.permutation(len(images))
    first = skip % per_pass
    while True:
        order = rng.permutation(len(images))
        for index in range(first, per_pass):
            start = index * batch_size
            yield (images[order[start : start + batch_size]],)
        first = 0


def load_data(args, channels, seed, initial_epoch=0):
    """Training data and the real images of KID/FID.

    Returns `(train, real_images, image_shape)`: `train` is endless (a
    repeated `tf.data.Dataset` or a generator) and `real_images` an array or
    a finite dataset. For tensorflow-datasets data that is not prepared in
    `--data-dir`, the loader's `DatasetNotPreparedError` propagates: it says
    how to prepare the data. A run resumed at `initial_epoch` gets the
    digits stand-in's stream from that epoch on; the tensorflow-datasets
    pipelines are reshuffled with `seed + initial_epoch` instead.
    """
    import keras_immiscible as ki

    image_shape = (args.image_size, args.image_size, channels)
    if args.dataset == STAND_IN:
        images = digits_images(args.image_size, channels)
        train = shuffled_batches(
            images, args.batch_size, seed,
            skip=initial_epoch * args.eval_every,
        )
        return train, images, image_shape
    seed = seed + initial_epoch
    spec = TFDS_DATASETS[args.dataset]
    loader = getattr(ki.data, spec["loader"])
    try:
        train = loader(
            image_size=args.image_size,
            batch_size=args.batch_size,
            flip=bool(args.flip),
            data_dir=args.data_dir,
            seed=seed,
        ).repeat()
        real = loader(
            spec["eval_split"],
            image_size=args.image_size,
            batch_size=min(256, args.eval_real_images),
            shuffle=False,
            cache=False,
            drop_remainder=False,
            data_dir=args.data_dir,
        )
    except ki.data.DatasetNotPreparedError:
        print(
            f"\nThe real run needs the tensorflow-datasets data of "
            f"'{args.dataset}' (see the message below). For a run without "
            "it, use --quick or --dataset digits (the embedded stand-in).\n",
            file=sys.stderr,
            flush=True,
        )
        raise
    return train, real, image_shape


# ---------------------------------------------------------------- metrics


def digits_stand_in_features(image_size, batch_size=256):
    """KID/FID features for the digits stand-in.

    The images are averaged over the upsampling blocks and the channels,
    which maps the stand-in back to the 8x8 digits exactly, then go through
    the embedded digits classifier (`digits_feature_extractor`).
    """
    import numpy as np

    import keras_immiscible as ki

    digits = ki.metrics.digits_feature_extractor()
    factor = image_size // 8

    def features(batch):
        x = np.asarray(batch)
        x = x.astype("float32") / 255.0 if x.dtype == np.uint8 else x
        n, channels = x.shape[0], x.shape[-1]
        x = x.reshape(n, 8, factor, 8, factor, channels).mean(axis=(2, 4, 5))
        return digits(x[..., None].astype("float32"))

    return ki.metrics.CallableFeatureExtractor(features, batch_size=batch_size)


def make_feature_extractor(args):
    """The KID/FID feature extractor; fails early without Inception weights."""
    from keras_immiscible.metrics import feature_extractors

    choice = args.feature_extractor
    if choice == "auto":
        choice = "digits" if args.dataset == STAND_IN else "inception"
    if choice == "digits":
        if args.dataset != STAND_IN:
            raise ValueError(
                "--feature-extractor digits only scores the digits stand-in "
                f"(--dataset digits), not --dataset {args.dataset}."
            )
        return digits_stand_in_features(args.image_size)
    weights = args.inception_weights
    if weights is None or str(weights).lower() == "none":
        log(
            "WARNING: --inception-weights none: KID/FID use a randomly "
            "initialized Inception-V3; the scores are for smoke tests only."
        )
        weights = None
    # Build it now: a real run must not train for hours and then find that
    # the weights cannot be downloaded.
    try:
        feature_extractors.inception_v3_model(weights)
    except Exception:
        print(
            "\nKID/FID of the real run need the ImageNet weights of "
            "Inception-V3. Offline, pass --inception-weights PATH (a local "
            "InceptionV3(include_top=False) weights file); for a run "
            "without them, use --quick or --dataset digits.\n",
            file=sys.stderr,
            flush=True,
        )
        raise
    return feature_extractors.InceptionFeatureExtractor(weights=weights)


# -------------------------------------------------------------- training


def make_optimizer(args):
    """The optimizer of the flags: Adam/AdamW, warm-up, clipping, EMA.

    `adamw` is `ki.optimizers.AdamW` (Keras' AdamW whose EMA can have a
    warm-up): with `--ema-warmup` (examples whose configuration has it) the
    EMA momentum warms up, otherwise it is Keras' constant momentum.
    """
    import keras

    import keras_immiscible as ki

    learning_rate = args.learning_rate
    if args.warmup_steps:
        # Linear warm-up from 0 to `learning_rate`, then constant: a cosine
        # decay whose floor (`alpha=1`) is its start.
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=1,
            alpha=1.0,
            warmup_target=args.learning_rate,
            warmup_steps=args.warmup_steps,
        )
    options = {
        "learning_rate": learning_rate,
        "global_clipnorm": args.grad_clip or None,
        "use_ema": args.ema > 0,
        "ema_momentum": args.ema if args.ema > 0 else 0.99,
    }
    if args.optimizer == "adamw":
        return ki.optimizers.AdamW(
            weight_decay=args.weight_decay,
            ema_warmup=getattr(args, "ema_warmup", 0) or None,
            **options,
        )
    return keras.optimizers.Adam(
        weight_decay=args.weight_decay or None, **options
    )


def step_logger(start_time):
    """A callback adding `step` (optimizer updates so far) and `wall_time`
    (seconds since `start_time`) to the logs of every epoch. (Built in a
    function: Keras is imported only once the backend is chosen.)"""
    import keras

    class StepLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                iterations = self.model.optimizer.iterations
                logs["step"] = int(keras.ops.convert_to_numpy(iterations))
                logs["wall_time"] = round(time.time() - start_time, 2)

    return StepLogger()


def total_steps(args):
    """`--steps` rounded up to whole evaluation periods: the run's length."""
    return max(1, math.ceil(args.steps / args.eval_every)) * args.eval_every


def grid_scale(image_size):
    """Tile upscaling of the grids, so that small images stay visible."""
    return max(1, 32 // image_size)


def load_checkpoint(path):
    """`keras.models.load_model(path)`, with an error that says what is
    wrong when the file is damaged (Keras reports a truncated `.keras` file
    as "File not found")."""
    import zipfile

    import keras

    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"The checkpoint {path!r} is damaged: it is not a complete "
            f"`.keras` (zip) file ({os.path.getsize(path)} bytes; a write "
            "that was interrupted?). Delete it to resume into a model built "
            "from the flags, or restore a copy."
        )
    return keras.models.load_model(path)


def run(args, build_model, channels, describe="", check_resumed=None):
    """Trains (or resumes) one experiment and writes all its outputs.

    Args:
        args: the parsed flags (`parse_args`).
        build_model: `build_model(args, image_shape)` returning the
            uncompiled model.
        channels: channels of the experiment's images.
        describe: one line about the experiment for the log.
        check_resumed: optional `check_resumed(args, model)`, called on the
            model of the checkpoint by `--resume`; raises if the flags ask for
            another model than the checkpoint holds.

    Returns:
        A dict with the `model`, the Keras `history`, `steps` (optimizer
        updates at the end), `initial_step`, `train_seconds` and the
        output paths.
    """
    setup_backend(args.backend)
    import keras
    import numpy as np

    import keras_immiscible as ki
    from keras_immiscible.utils.images import save_image_grid

    start_time = time.time()
    checkpoint = os.path.join(args.output, CHECKPOINT)
    steps_per_epoch = args.eval_every
    epochs = total_steps(args) // steps_per_epoch

    # Where to start: a fresh run, or the position of the backup. The
    # backup (the training state) is restored by `BackupAndRestore` when
    # `fit` starts; the checkpoint gives the model to restore it into.
    backup_dir = os.path.join(args.output, BACKUP)
    backup = ki.callbacks.BackupAndRestore(
        backup_dir, save_freq="epoch", delete_checkpoint=False
    )
    model = None
    initial_epoch = 0
    initial_step = 0
    if args.resume:
        if not os.path.exists(os.path.join(backup_dir, "training_metadata.json")):
            raise FileNotFoundError(
                f"--resume: no backup in {backup_dir!r}. Run without "
                "--resume first (with the same --output)."
            )
        initial_epoch, initial_step = backup.initial_epoch, backup.initial_step
        if os.path.exists(checkpoint):
            model = load_checkpoint(checkpoint)
            if check_resumed is not None:
                check_resumed(args, model)
        log(f"Resuming {backup_dir} at step {initial_step}.")
        planned = getattr(model, "total_training_steps", None)
        if planned is not None and planned != total_steps(args):
            log(
                f"Note: the checkpoint's curriculum spans {planned} steps "
                f"(its first run's --steps); this run trains to step "
                f"{total_steps(args)}."
            )
    elif os.path.exists(backup_dir) or os.path.exists(checkpoint):
        log(
            f"Note: {args.output} holds a run, which will be overwritten; "
            "pass --resume to continue it instead."
        )
        # Or `fit` would restore it.
        shutil.rmtree(backup_dir, ignore_errors=True)

    # Data first: a missing data set fails before anything is built.
    keras.utils.set_random_seed(args.seed)
    train, real_images, image_shape = load_data(
        args, channels, seed=args.seed, initial_epoch=initial_epoch
    )
    features = make_feature_extractor(args)
    os.makedirs(args.output, exist_ok=True)

    if model is None:
        model = build_model(args, image_shape)
        model.compile(optimizer=make_optimizer(args))
    elif tuple(model.image_shape) != tuple(image_shape):
        raise ValueError(
            f"The checkpoint's images are {tuple(model.image_shape)}, the "
            f"flags give {image_shape}: resume with the flags of the first "
            "run (--image-size, --dataset)."
        )

    scale = grid_scale(args.image_size)
    evaluation = ki.callbacks.GenerativeEvaluation(
        real_images,
        metrics=["kid", "fid"],
        num_images=args.eval_images,
        steps=args.eval_sampling_steps,
        seed=args.seed,
        batch_size=min(args.eval_images, 250),
        num_real_images=args.eval_real_images,
        feature_extractor=features,
        verbose=0,
    )
    callbacks = [
        # GenerativeEvaluation writes val_kid/val_fid into the logs: before
        # the callbacks that read them.
        evaluation,
        ki.callbacks.SampleGrid(
            os.path.join(args.output, SAMPLES_PATTERN),
            num_images=args.grid_images,
            steps=args.sampling_steps,
            seed=args.seed,
            scale=scale,
        ),
        step_logger(start_time),
        keras.callbacks.CSVLogger(
            os.path.join(args.output, LOG), append=args.resume
        ),
        # Before ModelCheckpoint: a non-finite loss stops `fit` here.
        backup,
        keras.callbacks.ModelCheckpoint(checkpoint),
    ]
    log(
        f"{describe} backend={args.backend}, dataset={args.dataset} "
        f"{image_shape}, assignment={args.assignment}"
        + (f" (k={args.k})" if args.assignment == "knn" else "")
        + f", batch {args.batch_size}, steps {initial_step} -> "
        f"{epochs * steps_per_epoch} (evaluation every {steps_per_epoch}), "
        f"output {args.output}."
    )
    train_start = time.time()
    if initial_epoch >= epochs:
        log(f"Nothing to train: the backup is already at step {initial_step}.")
    # Also when there is nothing to train: `fit` restores the backup (and
    # loads the EMA weights at its end).
    history = model.fit(
        train,
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    train_seconds = time.time() - train_start

    # After `fit` the model holds the EMA weights (Keras copies them in).
    samples = model.generate(
        args.grid_images, steps=args.sampling_steps, seed=args.seed
    )
    samples_path = os.path.join(args.output, FINAL_SAMPLES)
    save_image_grid(samples, samples_path, scale=scale)
    model_path = os.path.join(args.output, FINAL_MODEL)
    model.save(model_path)
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    scores = ""
    if history is not None and "val_kid" in history.history:
        scores = (
            f" KID {history.history['val_kid'][-1]:.4g}, FID "
            f"{history.history['val_fid'][-1]:.4g}."
        )
    log(
        f"Trained to step {steps} in {train_seconds:.0f} s.{scores} Samples: "
        f"{samples_path}. Model: {model_path}. Log: "
        f"{os.path.join(args.output, LOG)}. Checkpoint: {checkpoint}, "
        f"backup: {backup_dir}."
    )
    return {
        "model": model,
        "history": history,
        "steps": steps,
        "initial_step": initial_step,
        "train_seconds": train_seconds,
        "samples": np.asarray(samples),
        "samples_path": samples_path,
        "model_path": model_path,
        "checkpoint": checkpoint,
        "backup": backup_dir,
        "log_path": os.path.join(args.output, LOG),
    }
