"""Flow matching on CIFAR-10 with KNN noise selection (paper 2's experiment).

Paper 2: "Improved Immiscible Diffusion", arXiv 2505.18521. For every
image it draws k = 4 candidate noises and keeps the nearest, then trains
flow matching (straight paths `x_t = (1 - t) x0 + t eps`, velocity
regression) as usual; it reports CIFAR-10 FID 5.07 (vanilla) -> 3.68
(KNN). Compare the arms:

    python examples/flow_matching_cifar10.py --assignment none --output outputs/fm_none
    python examples/flow_matching_cifar10.py --assignment knn  --output outputs/fm_knn
    python examples/flow_matching_cifar10.py --output outputs/fm_knn --resume
    python examples/flow_matching_cifar10.py --quick      # seconds on a CPU, no data

The real run needs CIFAR-10 prepared for tensorflow-datasets
(`tfds build cifar10 --data_dir DIR`, then `--data-dir DIR`) and the ImageNet
weights of Inception-V3 for KID/FID (or `--inception-weights PATH`); it says
so at once when either is missing. It is a GPU job.

Where the defaults come from (also in `--help`): paper 2's flow-matching
code, github.com/yhli123/Immiscible-Diffusion, `KNN-flow_matching/`, built on
torchcfm's CIFAR-10 script (`train_cifar10.py`, run by `train_otcfm.sh`):

- KNN selection with k = 4 (`knnpackage/torchcfm/optimal_transport.py`),
  distances computed in float16 there (here in float32).
- batch 256, 400,000 steps, Adam lr 2e-4, EMA 0.9999 (`train_otcfm.sh`);
  5000-step linear warm-up, gradient-norm clipping 1.0, random horizontal
  flips (`train_cifar10.py`).
- UNet with 128 base channels x (1, 2, 2, 2), 2 residual blocks per
  resolution, attention at 16x16 with 4 heads, dropout 0.1
  (`train_cifar10.py`); this library's UNet follows that layout but is not
  the same network.
- Uniform training times, MSE on the velocity (torchcfm).
- Euler sampling with 50 steps (`fid_euler.sh`); checkpoints every 20,000
  steps (`save_step`), where this example also evaluates KID/FID (10,000
  generated images against the 50,000 training images: this example's
  choice; the paper's FIDs use 50,000 samples and the TF-1 Inception graph).
"""

import os
import sys
import time

import common
from common import Default

PAPER2 = "paper 2, arXiv 2505.18521"
CODE = "paper 2's code, KNN-flow_matching/train_cifar10.py"
SCRIPT = "paper 2's code, KNN-flow_matching/train_otcfm.sh"
EULER = "paper 2's code, fid_euler.sh"
OURS = "this example's choice"

CONFIG = {
    "image_size": Default(32, "CIFAR-10", quick=16),
    "batch_size": Default(256, SCRIPT, quick=32),
    "steps": Default(400_000, SCRIPT, quick=4),
    "eval_every": Default(20_000, SCRIPT + " (save_step)", quick=2),
    "learning_rate": Default(2e-4, SCRIPT, quick=2e-3),
    "warmup_steps": Default(5000, CODE, quick=0),
    "grad_clip": Default(1.0, CODE),
    "ema": Default(0.9999, SCRIPT, quick=0.9),
    "widths": Default((128, 256, 256, 256), CODE, quick=(16, 32)),
    "block_depth": Default(2, CODE, quick=1),
    "attention": Default((16,), CODE, quick=()),
    "num_heads": Default(4, CODE),
    "dropout": Default(0.1, CODE, quick=0.0),
    "time_sampling": Default("uniform", "torchcfm"),
    "sampler": Default("euler", EULER),
    "sampling_steps": Default(50, EULER, quick=5),
    "eval_images": Default(10_000, OURS, quick=16),
    "eval_real_images": Default(50_000, "the CIFAR-10 training set", quick=256),
    "grid_images": Default(64, OURS, quick=16),
    "assignment": Default("knn", PAPER2),
    "k": Default(4, PAPER2 + " and its code"),
    "solver": Default("scipy", "paper 1, for --assignment linear"),
    "distance": Default("l2", "paper 1, for --assignment linear"),
    "quantize": Default(True, "paper 1, for --assignment linear"),
}
EXTRA_FLAGS = {
    "time_sampling": (
        str,
        "distribution of the training times",
        ("uniform", "logit_normal"),
    ),
    "sampler": (str, "ODE solver of the samples", ("euler", "heun")),
}


def parse_args(argv=None):
    return common.parse_args(
        argv,
        __doc__,
        CONFIG,
        EXTRA_FLAGS,
        os.path.join("outputs", "flow_matching_cifar10"),
    )


def main(argv=None):
    args = parse_args(argv)
    common.select_backend(args.backend)
    import keras
    import numpy as np

    import keras_immiscible as ki
    from keras_immiscible.utils.images import save_image_grid

    start = time.time()
    keras.utils.set_random_seed(args.seed)
    backup = ki.callbacks.BackupAndRestore(
        common.backup_dir(args), delete_checkpoint=False
    )
    initial_step = backup.initial_step  # > 0: --resume continues from there

    # Data: CIFAR-10's training images, flipped at random, as endless
    # batches; KID/FID against the same images, on Inception-V3 features.
    # --quick: the embedded digits in 3 channels, scored on the digits
    # classifier. A resumed run continues the digits' stream exactly; the
    # tensorflow-datasets shuffle cannot be positioned, so it reshuffles.
    if args.quick:
        real = np.repeat(ki.data.load_digits(image_size=args.image_size), 3, axis=-1)
        train = ki.data.from_numpy(real, args.batch_size, seed=args.seed)
        train = train.repeat().skip(initial_step)
        features = common.digits_features(args.image_size)
    else:
        train = ki.data.load_cifar10(
            image_size=args.image_size,
            batch_size=args.batch_size,
            flip=True,
            data_dir=args.data_dir,
            seed=args.seed + initial_step,
        ).repeat()
        real = ki.data.load_cifar10(
            "train",
            image_size=args.image_size,
            batch_size=250,
            shuffle=False,
            cache=False,
            drop_remainder=False,
            data_dir=args.data_dir,
        )
        weights = args.inception_weights
        features = ki.metrics.InceptionFeatureExtractor(
            None if weights == "none" else weights
        )
        _ = features.model  # built now: missing weights fail before training

    # Network and model: straight paths x_t = (1 - t) x0 + t eps, velocity
    # target (torchcfm's), KNN-selected noise, Euler sampling.
    network = ki.layers.UNet(
        (args.image_size, args.image_size, 3),
        widths=args.widths,
        block_depth=args.block_depth,
        attention_resolutions=args.attention,
        num_heads=args.num_heads,
        dropout=args.dropout,
    )
    if args.assignment == "knn":
        assignment = ki.assignment.KNNSelection(k=args.k)
    elif args.assignment == "linear":
        assignment = ki.assignment.LinearAssignment(
            solver=args.solver, metric=args.distance, quantize=args.quantize
        )
    else:
        assignment = None  # plain training
    model = ki.ImmiscibleFlowMatching(
        network,
        time_sampling=args.time_sampling,
        sampler=args.sampler,
        assignment=assignment,
        seed=args.seed,
    )
    learning_rate = args.learning_rate
    if args.warmup_steps:  # linear from 0, then constant
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=1,
            alpha=1.0,
            warmup_target=args.learning_rate,
            warmup_steps=args.warmup_steps,
        )
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate,
            global_clipnorm=args.grad_clip or None,
            use_ema=True,
            ema_momentum=args.ema,
        )
    )

    # Callbacks, at the end of every epoch of `--eval-every` steps.
    def log_step_and_time(epoch, logs):
        logs["step"] = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        logs["wall_time"] = round(time.time() - start, 2)

    callbacks = [
        ki.callbacks.GenerativeEvaluation(  # val_kid, val_fid, EMA weights
            real,
            metrics=["kid", "fid"],
            num_images=args.eval_images,
            steps=args.sampling_steps,
            seed=args.seed,
            batch_size=min(250, args.eval_images),
            num_real_images=args.eval_real_images,
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
        keras.callbacks.CSVLogger(
            os.path.join(args.output, "log.csv"), append=args.resume
        ),
        backup,  # before ModelCheckpoint: a NaN stops `fit` here
        keras.callbacks.ModelCheckpoint(
            os.path.join(args.output, "checkpoints", "last.keras")
        ),
    ]

    # Training: a Keras epoch is `--eval-every` steps.
    model.fit(
        train,
        epochs=-(-args.steps // args.eval_every),
        steps_per_epoch=args.eval_every,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    )

    # Generate with the EMA weights (`fit` leaves them in the model), save.
    samples = model.generate(
        args.grid_images, steps=args.sampling_steps, seed=args.seed
    )
    save_image_grid(
        samples,
        os.path.join(args.output, "samples.png"),
        scale=max(1, 32 // args.image_size),
    )
    model.save(os.path.join(args.output, "model.keras"))
    common.summary(model, start, args.output)
    return {"model": model, "initial_step": initial_step}


if __name__ == "__main__":
    main()
