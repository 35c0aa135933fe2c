"""Consistency training on CIFAR-10 with immiscible noise assignment (paper 1).

Paper 1: Li et al., "Immiscible Diffusion: Accelerating Diffusion Training
with Noise Assignment", NeurIPS 2024, arXiv 2406.12303. Its headline result:
consistency training on CIFAR-10 at batch 512 reaches the FID of vanilla
training in about 1/3 of the steps with linear noise assignment. Compare
the arms (same seed and flags) on the FID curves in `log.csv`:

    python examples/consistency_cifar10.py --assignment none   --output outputs/ct_none
    python examples/consistency_cifar10.py --assignment linear --output outputs/ct_linear
    python examples/consistency_cifar10.py --output outputs/ct_linear --resume
    python examples/consistency_cifar10.py --quick      # seconds on a CPU, no data

The real run needs CIFAR-10 prepared for tensorflow-datasets
(`tfds build cifar10 --data_dir DIR`, then `--data-dir DIR`) and the ImageNet
weights of Inception-V3 for KID/FID (or `--inception-weights PATH`); it says
so at once when either is missing. It is a multi-GPU-day job.

The model is `keras_immiscible.ImmiscibleConsistency`, improved consistency
training (iCT, Song & Dhariwal 2023: pseudo-Huber loss, no EMA teacher,
lognormal noise levels, doubling discretisation curriculum) with assigned
noise. Paper 1 built on the original consistency training code
(openai/consistency_models_cifar10, CT with an LPIPS loss and an EMA
teacher), which Keras cannot reproduce as is (no LPIPS network): the recipe
below mixes the two, and says which number comes from where:

- batch 512: paper 1 (consistency models on CIFAR-10); also the CT config
  of openai/consistency_models_cifar10 (`configs/cifar10_ve_ct_adaptive.py`).
- 800,000 steps, learning rate 2e-4 with a linear warm-up over 10M images
  (19,531 steps at batch 512), no gradient clipping, EMA 0.9999 of the
  weights for sampling, random horizontal flips: that CT config and its
  defaults (`configs/default_cifar10_configs.py`). The config's optimizer is
  RAdam, which Keras does not have: Adam with the same warm-up here.
- Network: the config's NCSN++ has 128 channels x (2, 2, 2), 4 residual
  blocks per resolution, attention at 16x16, no dropout; this library's
  UNet with widths (256, 256, 256) follows that layout, not the same network.
- Loss, noise levels (sigma 0.002..80, rho 7, lognormal P_mean -1.1,
  P_std 2.0) and the curriculum (10 -> 1280 levels over the run): iCT; the
  curriculum's length is `--steps`.
- One-step sampling (`sampling.method = "onestep"` in the CT config).
- KID/FID every 10,000 steps (the config's `snapshot_freq`) on 10,000
  generated images against the 50,000 training images: this example's
  choice (the papers' FIDs use 50,000 samples and the TF-1 Inception graph).
- Linear assignment: paper 1's recipe, exact (scipy) on the host, L2
  distance computed in float16.
"""

import common
from common import Default

PAPER1 = common.PAPER1
CT = "openai/consistency_models_cifar10 configs/cifar10_ve_ct_adaptive.py"
ICT = "iCT, Song & Dhariwal 2023"
OURS = "this example's choice"

CONFIG = {
    "image_size": Default(32, "CIFAR-10", quick=16),
    "batch_size": Default(512, PAPER1 + " and " + CT, quick=32),
    "steps": Default(800_000, CT, quick=4),
    "eval_every": Default(10_000, CT + " (snapshot_freq)", quick=2),
    "learning_rate": Default(2e-4, CT, quick=2e-3),
    "warmup_steps": Default(19_531, CT + ": 10M images", quick=0),
    "ema": Default(0.9999, CT, quick=0.9),
    "widths": Default((256, 256, 256), CT + ": 128 x (2, 2, 2)", quick=(16, 32)),
    "block_depth": Default(4, CT, quick=1),
    "attention": Default((16,), CT, quick=()),
    "loss": Default("pseudo_huber", ICT),
    "initial_levels": Default(10, ICT),
    "final_levels": Default(1280, ICT),
    "sampling_steps": Default(1, CT + ": one-step sampling"),
    **common.CIFAR10_EVALUATION,  # KID/FID of 10,000 samples, grids of 64
    **common.PAPER1_ASSIGNMENT,  # linear (scipy, float16 L2); knn: k = 4
}
EXTRA_FLAGS = {
    "loss": (str, "training loss", ("pseudo_huber", "mse")),
    "initial_levels": (int, "noise levels at the curriculum's start", None),
    "final_levels": (int, "noise levels at the curriculum's end", None),
}


def parse_args(argv=None):
    return common.parse_args(argv, __doc__, CONFIG, EXTRA_FLAGS, "consistency_cifar10")


def main(argv=None):
    args = parse_args(argv)
    backup = common.start(args)  # backend, seed, clock, the --resume backup
    import keras_immiscible as ki

    # Data: CIFAR-10's training images, flipped at random, as endless
    # batches; KID/FID against the same images, on Inception-V3 features
    # (--quick: the digits; see common.image_data).
    train, real, features = common.image_data(args, ki.data.load_cifar10, flip=True)

    # Network: ki.layers.UNet in the CT config's layout (no dropout). Model:
    # iCT (pseudo-Huber loss, lognormal noise levels, a curriculum of
    # 10 -> 1280 levels over the whole run), one-step sampling.
    shape = (args.image_size, args.image_size, 3)
    network = ki.layers.UNet(
        shape, args.widths, args.block_depth, attention_resolutions=args.attention
    )
    model = ki.ImmiscibleConsistency(
        network,
        assignment=common.noise_assignment(args),  # --assignment, its flags
        seed=args.seed,
        total_training_steps=-(-args.steps // args.eval_every) * args.eval_every,
        initial_levels=args.initial_levels,
        final_levels=args.final_levels,
        loss_type=args.loss,
    )
    # Adam (the CT config's RAdam is not in Keras) with its linear warm-up,
    # no gradient clipping, EMA for sampling (common.adam).
    model.compile(optimizer=common.adam(args))

    # Fit, in epochs of `--eval-every` steps, at the end of each: KID/FID,
    # a sample grid, log.csv, the backup and a checkpoint (common.py).
    model.fit(train, **common.fit_options(model, args, backup, real, features))

    # Generate with the EMA weights, save the grid and the model.
    return common.finish(model, args)


if __name__ == "__main__":
    main()
