"""DDIM on Oxford Flowers 102 at 64x64: the keras.io DDIM example, immiscible.

The keras.io example "Denoising Diffusion Implicit Models" (András Béres,
keras.io/examples/generative/ddim) trains a small UNet on Oxford Flowers at
64x64 with a continuous cosine schedule and tracks KID. This script runs the
same setting with noise assignment (linear by default; `--assignment none`
is the keras.io example's plain training), and logs FID too:

    python examples/ddim_oxford_flowers.py --assignment none   --output outputs/flowers_none
    python examples/ddim_oxford_flowers.py --assignment linear --output outputs/flowers_linear
    python examples/ddim_oxford_flowers.py --output outputs/flowers_linear --resume
    python examples/ddim_oxford_flowers.py --quick     # seconds on a CPU, no data

The real run needs Oxford Flowers 102 prepared for tensorflow-datasets
(`tfds build oxford_flowers102 --data_dir DIR`, then `--data-dir DIR`) and
the ImageNet weights of Inception-V3 for KID/FID (or
`--inception-weights PATH`); it says so at once when either is missing. A
single GPU trains it in well under an hour.

Where the defaults come from (the keras.io example's hyperparameters, also
in `--help`):

- 64x64 images, batch 64, the first 80% of every official split for training
  and the last 20% for KID (the loader's default split); no flips.
- widths (32, 64, 96, 128), block depth 2, no attention, sinusoidal
  embedding of 32 dimensions; the cosine schedule with signal rates in
  [0.02, 0.95]; the network predicts the noise; mean absolute error loss.
- AdamW, learning rate 1e-3, weight decay 1e-4, EMA 0.999.
- 20 DDIM steps for the sample grids and 5 for KID (`plot_diffusion_steps`,
  `kid_diffusion_steps`).
- Length: the example's data set is repeated 5 times per epoch
  (`dataset_repetitions`), i.e. 510 steps of batch 64 per epoch, and its
  comment asks for at least 50 epochs: 25,500 steps, evaluated every 510.

Differences: images are scaled to [-1, 1] instead of a learned per-channel
normalization, this library's UNet conditions every residual block on the
noise level (the example concatenates it at the input only), and KID/FID
resize to Inception's 299x299 (the example: 75x75), on 1,000 generated
images (the example: one validation pass). Linear assignment uses the
library's defaults (exact scipy solver, squared L2).
"""

import os
import sys
import time

import common
from common import Default

KERAS_IO = "the keras.io DDIM example"
OURS = "this example's choice"

CONFIG = {
    "image_size": Default(64, KERAS_IO, quick=16),
    "batch_size": Default(64, KERAS_IO, quick=32),
    "steps": Default(25_500, KERAS_IO + ": 50 epochs of 510 steps", quick=4),
    "eval_every": Default(510, KERAS_IO + ": one epoch", quick=2),
    "learning_rate": Default(1e-3, KERAS_IO, quick=2e-3),
    "weight_decay": Default(1e-4, KERAS_IO),
    "ema": Default(0.999, KERAS_IO, quick=0.9),
    "widths": Default((32, 64, 96, 128), KERAS_IO, quick=(16, 32)),
    "block_depth": Default(2, KERAS_IO, quick=1),
    "loss": Default("mae", KERAS_IO),
    "sampling_steps": Default(20, KERAS_IO + " (plot_diffusion_steps)", quick=5),
    "eval_sampling_steps": Default(5, KERAS_IO + " (kid_diffusion_steps)"),
    "eval_images": Default(1000, OURS, quick=16),
    "eval_real_images": Default(10_000, "the whole held-out 20% (~1,640)", quick=256),
    "grid_images": Default(18, KERAS_IO + ": a 3x6 grid", quick=16),
    "assignment": Default("linear", "this example's point (paper 1)"),
    "k": Default(8, "KNNSelection's default"),
}
EXTRA_FLAGS = {"loss": (str, "training loss", ("mae", "mse"))}


def parse_args(argv=None):
    return common.parse_args(
        argv,
        __doc__,
        CONFIG,
        EXTRA_FLAGS,
        os.path.join("outputs", "ddim_oxford_flowers"),
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

    # Data: the first 80% of every official split of Oxford Flowers 102 at
    # 64x64, as endless batches; KID/FID against the last 20% (the keras.io
    # example's validation set), on Inception-V3 features. --quick: the
    # embedded digits in 3 channels, scored on the digits classifier. A
    # resumed run continues the digits' stream exactly; the
    # tensorflow-datasets shuffle cannot be positioned, so it reshuffles.
    if args.quick:
        real = np.repeat(ki.data.load_digits(image_size=args.image_size), 3, axis=-1)
        train = ki.data.from_numpy(real, args.batch_size, seed=args.seed)
        train = train.repeat().skip(initial_step)
        features = common.digits_features(args.image_size)
    else:
        train = ki.data.load_oxford_flowers(
            image_size=args.image_size,
            batch_size=args.batch_size,
            data_dir=args.data_dir,
            seed=args.seed + initial_step,
        ).repeat()
        real = ki.data.load_oxford_flowers(
            "train[80%:]+validation[80%:]+test[80%:]",
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

    # Network and model: the keras.io example's UNet, cosine schedule with
    # signal rates in [0.02, 0.95], noise prediction, MAE, DDIM sampling.
    network = ki.layers.UNet(
        (args.image_size, args.image_size, 3),
        widths=args.widths,
        block_depth=args.block_depth,
        embedding_dims=32,
    )
    if args.assignment == "linear":
        assignment = ki.assignment.LinearAssignment()  # exact (scipy)
    elif args.assignment == "knn":
        assignment = ki.assignment.KNNSelection(k=args.k)
    else:
        assignment = None  # plain training: the keras.io example
    model = ki.ImmiscibleDiffusion(
        network,
        schedule=ki.schedules.CosineSchedule(
            min_signal_rate=0.02, max_signal_rate=0.95
        ),
        prediction="epsilon",
        sampler=ki.samplers.DDIM(eta=0.0),
        loss_type=args.loss,
        assignment=assignment,
        seed=args.seed,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            args.learning_rate,
            weight_decay=args.weight_decay,
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
            steps=args.eval_sampling_steps,
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
