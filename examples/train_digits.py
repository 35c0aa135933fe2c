"""Train an immiscible diffusion model on the embedded 8x8 digits (CPU).

No network needed: the data ships with scikit-learn, and KID/FID use the
library's small digits classifier (trained on first use in a few seconds,
then cached). This is the README's main job:

    python examples/train_digits.py                       # defaults below
    python examples/train_digits.py --backend jax --assignment knn --steps 800
    python examples/train_digits.py --resume              # continue a run
    python examples/train_digits.py --quick               # seconds

Outputs, in `--output` (default `outputs/digits`): `samples.png` (64
generated digits) and `model.keras` (the trained model, EMA weights), plus
`log.csv` (loss, assignment_gain, KID, FID every `--eval-every` steps),
`samples/epoch_NNNN.png` and `checkpoints/last.keras` (for `--resume`).

Defaults (CPU scale, chosen for this library, see DESIGN.md's measurement
notes): linear assignment (exact, scipy), batch 128, 1500 steps, a UNet with
widths (32, 64) and 2 residual blocks per resolution, the keras.io DDIM
example's cosine schedule, AdamW with learning rate 1e-3, EMA 0.99 (a short
horizon, so that a 1500-step run samples from trained weights), 30 DDIM
steps, KID/FID every 150 steps on 500 samples against all 1,797 digits.
Run `--help` for every flag.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from common import Default

OURS = "CPU-scale choice of this library"

CONFIG = {
    "dataset": Default("digits", "scikit-learn's bundled digits"),
    "image_size": Default(8, "the digits as they are (16 or 32 upsample)"),
    "batch_size": Default(128, OURS, quick=16),
    "steps": Default(1500, OURS, quick=4),
    "eval_every": Default(150, OURS, quick=2),
    "optimizer": Default("adamw", OURS),
    "learning_rate": Default(1e-3, OURS),
    "warmup_steps": Default(0, OURS),
    "weight_decay": Default(0.004, "AdamW's default"),
    "grad_clip": Default(0.0, OURS),
    "ema": Default(
        0.99, "DESIGN.md: short EMA horizon on short runs", quick=0.9
    ),
    "widths": Default((32, 64), OURS, quick=(16, 32)),
    "block_depth": Default(2, OURS, quick=1),
    "attention": Default((), OURS),
    "dropout": Default(0.0, OURS),
    "loss": Default("mse", OURS),
    "sampling_steps": Default(30, OURS, quick=5),
    "eval_sampling_steps": Default(30, OURS, quick=5),
    "eval_images": Default(500, OURS, quick=16),
    "eval_real_images": Default(1797, "all digits", quick=256),
    "grid_images": Default(64, OURS, quick=16),
    "assignment": Default("linear", "paper 1's linear assignment"),
    "k": Default(8, "KNNSelection's default"),
    "solver": Default("scipy", "LinearAssignment's default"),
    "distance": Default("sq_l2", "LinearAssignment's default"),
    "quantize": Default(False, "LinearAssignment's default"),
}


def build_model(args, image_shape):
    import keras_immiscible as ki

    network = ki.layers.UNet(
        image_shape,
        widths=args.widths,
        block_depth=args.block_depth,
        attention_resolutions=args.attention,
        dropout=args.dropout,
    )
    return ki.ImmiscibleDiffusion(
        network,
        assignment=common.make_assigner(args),
        loss_type=args.loss,
        seed=args.seed,
    )


def parse_args(argv=None):
    return common.parse_args(
        argv,
        __doc__,
        CONFIG,
        extra_flags={"loss": (str, "training loss", ("mse", "mae"))},
        datasets=("digits",),
        default_output=os.path.join("outputs", "digits"),
    )


def main(argv=None):
    args = parse_args(argv)
    return common.run(args, build_model, channels=1, describe="Digits:")


if __name__ == "__main__":
    main()
