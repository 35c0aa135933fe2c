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
EXTRA_FLAGS = {
    "loss": (str, "training loss", ("mae", "mse")),
    "eval_sampling_steps": (common.COUNT, "sampler steps of the KID/FID samples"),
}


def parse_args(argv=None):
    return common.parse_args(argv, __doc__, CONFIG, EXTRA_FLAGS, "ddim_oxford_flowers")


def main(argv=None):
    args = parse_args(argv)
    backup = common.start(args)  # backend, seed, clock, the --resume backup
    import keras

    import keras_immiscible as ki

    # Data: the first 80% of every official split of Oxford Flowers 102 at
    # 64x64, as endless batches; KID/FID against the last 20% (the keras.io
    # example's validation set), on Inception-V3 features (--quick: the
    # digits; see common.image_data).
    held_out = "train[80%:]+validation[80%:]+test[80%:]"
    train, real, features = common.image_data(
        args, ki.data.load_oxford_flowers, held_out
    )

    # Network: ki.layers.UNet in the keras.io example's layout (no attention,
    # a 32-dim noise embedding). Model: cosine schedule with signal rates in
    # [0.02, 0.95], noise prediction, MAE, DDIM.
    shape = (args.image_size, args.image_size, 3)
    network = ki.layers.UNet(shape, args.widths, args.block_depth, embedding_dims=32)
    model = ki.ImmiscibleDiffusion(
        network,
        assignment=common.noise_assignment(args),  # none: the keras.io example
        seed=args.seed,
        schedule=ki.schedules.CosineSchedule(
            min_signal_rate=0.02, max_signal_rate=0.95
        ),
        prediction="epsilon",
        sampler=ki.samplers.DDIM(eta=0.0),
        loss_type=args.loss,
    )
    # The keras.io example's AdamW, with Keras' EMA for sampling.
    model.compile(
        optimizer=keras.optimizers.AdamW(
            args.learning_rate,
            weight_decay=args.weight_decay,
            use_ema=True,
            ema_momentum=args.ema,
        )
    )

    # Fit, in epochs of `--eval-every` steps, at the end of each: KID/FID,
    # a sample grid, log.csv, the backup and a checkpoint (common.py).
    model.fit(train, **common.fit_options(model, args, backup, real, features))

    # Generate with the EMA weights, save the grid and the model.
    return common.finish(model, args)


if __name__ == "__main__":
    main()
