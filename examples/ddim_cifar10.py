"""DDIM on CIFAR-10 with immiscible noise assignment (paper 1's DDIM experiment).

Paper 1: Li et al., "Immiscible Diffusion: Accelerating Diffusion Training
with Noise Assignment", NeurIPS 2024, arXiv 2406.12303. Its DDIM experiment
trains a DDPM/DDIM denoiser on CIFAR-10 at batch 256 and compares vanilla
training with linear assignment (the paper reports converged FID 6.63 ->
5.14; paper 2 adds KNN, 4.45). Compare the arms with the same seed and
flags:

    python examples/ddim_cifar10.py --assignment none   --output outputs/ddim_none
    python examples/ddim_cifar10.py --assignment linear --output outputs/ddim_linear
    python examples/ddim_cifar10.py --assignment knn    --output outputs/ddim_knn
    python examples/ddim_cifar10.py --output outputs/ddim_linear --resume
    python examples/ddim_cifar10.py --quick           # seconds on a CPU, no data

The real run needs CIFAR-10 prepared for tensorflow-datasets
(`tfds build cifar10 --data_dir DIR`, then `--data-dir DIR`) and the ImageNet
weights of Inception-V3 for KID/FID (or `--inception-weights PATH`); it says
so at once when either is missing. It is a GPU job (about 36M parameters,
400k steps).

Where the defaults come from (also in `--help`):

- batch 256: paper 1 (DDIM on CIFAR-10).
- Everything else of the training recipe comes from the code paper 1 builds
  its DDIM experiment on, tqch/ddpm-torch (`configs/cifar10.json`): linear
  betas 1e-4..0.02 over 1000 steps, epsilon prediction, MSE loss, Adam
  lr 2e-4 with a 5000-step linear warm-up, gradient-norm clipping 1.0, EMA
  0.9999, UNet with 128 base channels x (1, 2, 2, 2), 2 residual blocks per
  resolution, attention at 16x16, dropout 0.1, random horizontal flips.
  This library's UNet follows that layout but is not the same network (it
  injects the time embedding with FiLM in every block).
- steps 397,800: ddpm-torch's 2040 epochs, at batch 256 (195 steps per
  epoch). Not verified against paper 1, which plots FID against steps.
- Linear assignment: the paper's recipe, exact (scipy) on the host, L2
  distance computed in float16 ("quantized").
- DDIM sampling with 50 steps (eta 0): a common DDIM setting; the number of
  steps behind paper 1's FIDs is not verified here.
- KID/FID every 10,000 steps on 10,000 generated images against the 50,000
  training images: this example's choice. Published FIDs use 50,000 samples
  and the TF-1 Inception graph; Keras' Inception-V3 gives FIDs comparable
  between runs of this library, not with the papers' tables.
"""

import common
from common import Default

PAPER1 = common.PAPER1
DDPM_TORCH = "tqch/ddpm-torch configs/cifar10.json, the DDIM code of paper 1"
OURS = "this example's choice"

CONFIG = {
    "image_size": Default(32, "CIFAR-10", quick=16),
    "batch_size": Default(256, PAPER1, quick=32),
    "steps": Default(
        397_800, "2040 epochs of ddpm-torch at batch 256; unverified", quick=4
    ),
    "eval_every": Default(10_000, OURS, quick=2),
    "learning_rate": Default(2e-4, DDPM_TORCH, quick=2e-3),
    "warmup_steps": Default(5000, DDPM_TORCH, quick=0),
    "grad_clip": Default(1.0, DDPM_TORCH),
    "ema": Default(0.9999, DDPM_TORCH, quick=0.9),
    "widths": Default((128, 256, 256, 256), DDPM_TORCH, quick=(16, 32)),
    "block_depth": Default(2, DDPM_TORCH, quick=1),
    "attention": Default((16,), DDPM_TORCH, quick=()),
    "dropout": Default(0.1, DDPM_TORCH, quick=0.0),
    "sampling_steps": Default(50, "a common DDIM setting; unverified", quick=5),
    **common.CIFAR10_EVALUATION,  # KID/FID of 10,000 samples, grids of 64
    **common.PAPER1_ASSIGNMENT,  # linear (scipy, float16 L2); knn: k = 4
}


def parse_args(argv=None):
    return common.parse_args(argv, __doc__, CONFIG, None, "ddim_cifar10")


def main(argv=None):
    args = parse_args(argv)
    backup = common.start(args)  # backend, seed, clock, the --resume backup
    import keras_immiscible as ki

    # Data: CIFAR-10's training images, flipped at random, as endless
    # batches; KID/FID against the same images, on Inception-V3 features
    # (--quick: the digits; see common.image_data).
    train, real, features = common.image_data(args, ki.data.load_cifar10, flip=True)

    # Network: ki.layers.UNet in ddpm-torch's layout. Model: ddpm-torch's
    # linear betas, epsilon target, DDIM sampling.
    shape, attention = (args.image_size, args.image_size, 3), args.attention
    network = ki.layers.UNet(
        shape, args.widths, args.block_depth, attention, dropout=args.dropout
    )
    model = ki.ImmiscibleDiffusion(
        network,
        assignment=common.noise_assignment(args),  # --assignment, its flags
        seed=args.seed,
        schedule=ki.schedules.LinearBeta(1000, beta_start=1e-4, beta_end=0.02),
        prediction="epsilon",
        sampler=ki.samplers.DDIM(eta=0.0),
    )
    # ddpm-torch's Adam: linear warm-up, gradient clipping, EMA for sampling
    # (common.adam: --learning-rate, --warmup-steps, --grad-clip, --ema).
    model.compile(optimizer=common.adam(args))

    # Fit, in epochs of `--eval-every` steps, at the end of each: KID/FID,
    # a sample grid, log.csv, the backup and a checkpoint (common.py).
    model.fit(train, **common.fit_options(model, args, backup, real, features))

    # Generate with the EMA weights, save the grid and the model.
    return common.finish(model, args)


if __name__ == "__main__":
    main()
