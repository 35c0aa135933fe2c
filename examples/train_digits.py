"""Train an immiscible flow-matching model on the embedded digits (CPU).

No network needed: the data ships with scikit-learn, and KID/FID use the
library's small digits classifier (trained on first use in a few seconds,
then cached). This is the README's main job:

    python examples/train_digits.py                       # defaults below
    python examples/train_digits.py --assignment none --output outputs/vanilla
    python examples/train_digits.py --family ddim --image-size 8
    python examples/train_digits.py --backend jax --assignment knn --steps 800
    python examples/train_digits.py --resume              # continue a run
    python examples/train_digits.py --quick               # seconds

Outputs, in `--output` (default `outputs/digits`): `samples.png` (64
generated digits) and `model.keras` (the trained model, EMA weights), plus
`log.csv` (loss, assignment_gain, KID, FID every `--eval-every` steps),
`samples/epoch_NNNN.png` and `checkpoints/last.keras` (for `--resume`).

Where the defaults come from: docs/benchmarks/convergence_regime.md: flow
matching + linear assignment at 16x16 is the configuration where immiscible
training helped, at few sampling steps. So the defaults are that benchmark's
setting: `--family flow` (`ki.ImmiscibleFlowMatching`: straight path,
velocity target, uniform times, Euler sampling), linear assignment (exact,
scipy), the bundled 8x8 digits upsampled (nearest) to 16x16, batch 128, a
UNet with widths (16, 32) and 1 residual block per resolution,
`ki.optimizers.AdamW` with learning rate 1e-3 and an EMA of momentum 0.99
with warm-up 10 (`min(0.99, (1 + t) / (10 + t))` at step t, so that a short
run samples from trained weights), and 10 Euler steps for the grids and the
KID/FID samples. KID/FID every 300 steps on 500 samples against all 1,797
digits. `--family ddim` trains `ki.ImmiscibleDiffusion` instead (epsilon
target, the keras.io DDIM example's cosine schedule, DDIM sampling).

The step count, 1200, is this library's choice, sized to finish within 3
minutes on 2 CPU cores: measured here with TensorFlow on short runs (CPU
time of one thread, the machine shared with a benchmark), a step takes
113 ms after the first epoch's tracing (the first 200 steps 31 s), a KID/FID
evaluation with its sample grid 3.7 s (the first 6.6 s) and the imports 5 s,
so the whole run takes about 2.8 minutes. `--quick` takes about 17 s of CPU.
Run `--help` for every flag.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from common import Default

OURS = "CPU-scale choice of this library"
REGIME = (
    "docs/benchmarks/convergence_regime.md: flow matching + linear "
    "assignment at 16x16 is the configuration where immiscible training "
    "helped, at few sampling steps"
)
BENCHMARK = "the setting of benchmarks/convergence.py"
FAMILIES = ("flow", "ddim")

CONFIG = {
    "family": Default("flow", REGIME),
    "dataset": Default("digits", "scikit-learn's bundled digits"),
    "image_size": Default(16, REGIME + " (8: the digits as they are)"),
    "batch_size": Default(128, BENCHMARK, quick=16),
    "steps": Default(1200, OURS + ": about 3 minutes on 2 CPU cores", quick=4),
    "eval_every": Default(300, OURS, quick=2),
    "optimizer": Default("adamw", BENCHMARK + " (ki.optimizers.AdamW)"),
    "learning_rate": Default(1e-3, BENCHMARK),
    "warmup_steps": Default(0, BENCHMARK),
    "weight_decay": Default(0.004, "AdamW's default"),
    "grad_clip": Default(0.0, BENCHMARK),
    "ema": Default(
        0.99, BENCHMARK + "; a short EMA horizon on short runs", quick=0.9
    ),
    "ema_warmup": Default(10.0, BENCHMARK + " (ki.optimizers.AdamW's default)"),
    "widths": Default((16, 32), REGIME + " (its 16x16 UNet)"),
    "block_depth": Default(1, REGIME + " (its 16x16 UNet)"),
    "attention": Default((), BENCHMARK),
    "dropout": Default(0.0, BENCHMARK),
    "loss": Default("mse", BENCHMARK),
    "sampling_steps": Default(10, REGIME, quick=5),
    "eval_sampling_steps": Default(10, REGIME, quick=5),
    "eval_images": Default(500, OURS, quick=16),
    "eval_real_images": Default(1797, "all digits", quick=256),
    "grid_images": Default(64, OURS, quick=16),
    "assignment": Default("linear", REGIME),
    "k": Default(8, "KNNSelection's default"),
    "solver": Default("scipy", "LinearAssignment's default"),
    "distance": Default("sq_l2", "LinearAssignment's default"),
    "quantize": Default(False, "LinearAssignment's default"),
}

EXTRA_FLAGS = {
    "family": (
        str,
        (
            "model family: flow (ki.ImmiscibleFlowMatching, Euler sampling) "
            "or ddim (ki.ImmiscibleDiffusion, DDIM sampling)"
        ),
        FAMILIES,
    ),
    "loss": (str, "training loss", ("mse", "mae")),
}


def model_class(family):
    import keras_immiscible as ki

    if family == "flow":
        return ki.ImmiscibleFlowMatching
    return ki.ImmiscibleDiffusion


def build_model(args, image_shape):
    import keras_immiscible as ki

    network = ki.layers.UNet(
        image_shape,
        widths=args.widths,
        block_depth=args.block_depth,
        attention_resolutions=args.attention,
        dropout=args.dropout,
    )
    options = dict(
        assignment=common.make_assigner(args),
        loss_type=args.loss,
        seed=args.seed,
    )
    if args.family == "flow":
        # Straight path, velocity target, uniform times, Euler sampling.
        return ki.ImmiscibleFlowMatching(network, sampler="euler", **options)
    # Epsilon target, cosine schedule, DDIM (eta = 0) sampling.
    return ki.ImmiscibleDiffusion(network, **options)


def check_resumed(args, model):
    """`--resume` continues the checkpoint's family, not another one."""
    expected = model_class(args.family)
    if type(model) is not expected:
        family = next(
            (f for f in FAMILIES if type(model) is model_class(f)), None
        )
        raise ValueError(
            f"--resume: the checkpoint holds a {type(model).__name__}, but "
            f"--family {args.family} trains a {expected.__name__}: resume "
            f"with the flags of the first run"
            + (f" (--family {family})." if family else ".")
        )


def parse_args(argv=None):
    return common.parse_args(
        argv,
        __doc__,
        CONFIG,
        extra_flags=EXTRA_FLAGS,
        datasets=("digits",),
        default_output=os.path.join("outputs", "digits"),
    )


def main(argv=None):
    args = parse_args(argv)
    return common.run(
        args,
        build_model,
        channels=1,
        describe=f"Digits, family {args.family}:",
        check_resumed=check_resumed,
    )


if __name__ == "__main__":
    main()
