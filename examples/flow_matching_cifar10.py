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
    **common.CIFAR10_EVALUATION,  # KID/FID of 10,000 samples, grids of 64
    **common.PAPER1_ASSIGNMENT,  # linear: paper 1's (scipy, float16 L2)
    "assignment": Default("knn", PAPER2),
    "k": Default(4, PAPER2 + " and its code"),
}
EXTRA_FLAGS = {
    "num_heads": (common.COUNT, "heads of the attention blocks"),
    "time_sampling": (
        str,
        "distribution of the training times",
        ("uniform", "logit_normal"),
    ),
    "sampler": (str, "ODE solver of the samples", ("euler", "heun")),
}


def parse_args(argv=None):
    return common.parse_args(
        argv, __doc__, CONFIG, EXTRA_FLAGS, "flow_matching_cifar10"
    )


def main(argv=None):
    args = parse_args(argv)
    backup = common.start(args)  # backend, seed, clock, the --resume backup
    import keras_immiscible as ki

    # Data: CIFAR-10's training images, flipped at random, as endless
    # batches; KID/FID against the same images, on Inception-V3 features
    # (--quick: the digits; see common.image_data).
    train, real, features = common.image_data(args, ki.data.load_cifar10, flip=True)

    # Network: ki.layers.UNet in torchcfm's layout. Model: straight paths
    # x_t = (1 - t) x0 + t eps, velocity target (torchcfm's), KNN-selected
    # noise, Euler sampling.
    network = ki.layers.UNet(
        (args.image_size, args.image_size, 3),
        args.widths,
        args.block_depth,
        attention_resolutions=args.attention,
        num_heads=args.num_heads,
        dropout=args.dropout,
    )
    model = ki.ImmiscibleFlowMatching(
        network,
        assignment=common.noise_assignment(args),  # --assignment, its flags
        seed=args.seed,
        time_sampling=args.time_sampling,
        sampler=args.sampler,
    )
    # torchcfm's Adam: linear warm-up, gradient clipping, EMA for sampling
    # (common.adam: --learning-rate, --warmup-steps, --grad-clip, --ema).
    model.compile(optimizer=common.adam(args))

    # Fit, in epochs of `--eval-every` steps, at the end of each: KID/FID,
    # a sample grid, log.csv, the backup and a checkpoint (common.py).
    model.fit(train, **common.fit_options(model, args, backup, real, features))

    # Generate with the EMA weights, save the grid and the model.
    return common.finish(model, args)


if __name__ == "__main__":
    main()
