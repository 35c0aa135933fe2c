"""Train an immiscible flow-matching model on the embedded digits, on a CPU.

This is the README's main job. No network is needed: the data ships with
scikit-learn, and KID/FID use the library's small digits classifier (trained
on first use in a few seconds, then cached).

    python examples/train_digits.py                       # the defaults below
    python examples/train_digits.py --assignment none --output outputs/vanilla
    python examples/train_digits.py --family ddim --image-size 8
    python examples/train_digits.py --backend jax --assignment knn
    python examples/train_digits.py --resume              # continue a run
    python examples/train_digits.py --quick               # seconds

It writes, in `--output` (default `outputs/digits`): `samples.png` (64
generated digits) and `model.keras` (the trained model, EMA weights), plus
`log.csv` (loss, assignment_gain, KID, FID at every evaluation),
`samples/epoch_NNNN.png`, `checkpoints/last.keras` and `backup/` (for
`--resume`).

Where the defaults come from: in docs/benchmarks/convergence_regime.md,
flow matching with linear assignment at 16x16 is the setting in which
immiscible training helped, at few sampling steps. So the defaults are that
benchmark's: `ki.ImmiscibleFlowMatching` (straight path, velocity target,
uniform times, Euler sampling) with exact linear assignment (scipy), the
bundled 8x8 digits upsampled (nearest) to 16x16, batch 128, a UNet with
widths (16, 32) and one residual block per resolution, `ki.optimizers.AdamW`
with learning rate 1e-3 and an EMA of momentum 0.99 with warm-up 10 (so that
a short run samples from trained weights), and 10 Euler steps for the grids
and the KID/FID samples. `--family ddim` trains `ki.ImmiscibleDiffusion`
instead (epsilon target, the keras.io DDIM example's cosine schedule, DDIM
sampling). The length, 1,200 steps with an evaluation every 400, is this
library's choice for a run of under 3 minutes on 2 CPU cores: measured
with TensorFlow on 2 shared cores, 2 min 54 s for the whole command (202 s
user, 11 s system CPU time; a training step costs about 125 ms of CPU, an
evaluation about 3 s). Run `--help` for every flag and its source.
"""

import common
from common import Default

OURS = "this library's CPU-scale choice"
REGIME = (
    "docs/benchmarks/convergence_regime.md: flow matching + linear "
    "assignment at 16x16 is where immiscible training helped, at few "
    "sampling steps"
)
BENCHMARK = "the setting of benchmarks/convergence.py"

CONFIG = {
    "family": Default("flow", REGIME),
    "image_size": Default(16, REGIME + " (8: the digits as they are)"),
    "batch_size": Default(128, BENCHMARK, quick=16),
    "steps": Default(1200, OURS + ": under 3 minutes on 2 CPU cores", quick=4),
    "eval_every": Default(400, OURS, quick=2),
    "learning_rate": Default(1e-3, BENCHMARK),
    "ema": Default(0.99, BENCHMARK + ": a short horizon for short runs", quick=0.9),
    "ema_warmup": Default(10.0, BENCHMARK + " (ki.optimizers.AdamW's)"),
    "widths": Default((16, 32), REGIME + " (its 16x16 UNet)"),
    "block_depth": Default(1, REGIME + " (its 16x16 UNet)"),
    "sampling_steps": Default(10, REGIME, quick=5),
    "eval_images": Default(500, OURS, quick=16),
    "grid_images": Default(64, OURS, quick=16),
    "assignment": Default("linear", REGIME),
    "k": Default(8, "KNNSelection's default"),
}
EXTRA_FLAGS = {
    "ema_warmup": (
        common.checked(float, "0 (none) or >= 1", lambda v: v == 0 or v >= 1),
        "EMA momentum min(ema, (1 + t) / (ema_warmup + t)) at step t (0: none)",
    ),
    "family": (
        str,
        "flow (ki.ImmiscibleFlowMatching, Euler sampling) or "
        "ddim (ki.ImmiscibleDiffusion, DDIM sampling)",
        ("flow", "ddim"),
    ),
    "image_size": (
        int,
        "8 (the digits as they are), 16 or 32 (upsampled)",
        (8, 16, 32),
    ),
}


def parse_args(argv=None):
    return common.parse_args(
        argv, __doc__, CONFIG, EXTRA_FLAGS, "digits", real_data=False
    )


def main(argv=None):
    args = parse_args(argv)
    backup = common.start(args)  # backend, seed, clock, the --resume backup
    import keras_immiscible as ki

    # Data: the 1,797 digits, upsampled to (S, S, 1), float32 in [0, 1],
    # as endless shuffled batches. A resumed run skips the batches the
    # backup has trained on, so it continues the uninterrupted run's stream.
    # KID/FID on the digits classifier's features (it averages the upsampled
    # digits back to 8x8).
    images = ki.data.load_digits(image_size=args.image_size)
    train = ki.data.from_numpy(images, args.batch_size, seed=args.seed)
    train = train.repeat().skip(args.initial_step)
    features = ki.metrics.digits_feature_extractor()

    # Network and model.
    network = ki.layers.UNet(
        images.shape[1:], widths=args.widths, block_depth=args.block_depth
    )
    assignment = common.noise_assignment(args)  # linear: exact (scipy)
    if args.family == "flow":
        model = ki.ImmiscibleFlowMatching(
            network, assignment=assignment, sampler="euler", seed=args.seed
        )
    else:
        model = ki.ImmiscibleDiffusion(network, assignment=assignment, seed=args.seed)
    # The library's AdamW: its EMA warms up, so that a short run samples from
    # trained weights.
    model.compile(
        optimizer=ki.optimizers.AdamW(
            args.learning_rate,
            use_ema=True,
            ema_momentum=args.ema,
            ema_warmup=args.ema_warmup or None,
        )
    )

    # Fit, in epochs of `--eval-every` steps, at the end of each: KID/FID,
    # a sample grid, log.csv, the backup and a checkpoint (common.py).
    model.fit(train, **common.fit_options(model, args, backup, images, features))

    # Generate with the EMA weights, save the grid and the model.
    return common.finish(model, args)


if __name__ == "__main__":
    main()
