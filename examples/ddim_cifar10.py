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

import os
import sys
import time

import common
from common import Default

PAPER1 = "paper 1, Li et al. 2024, arXiv 2406.12303"
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
    "eval_images": Default(10_000, OURS, quick=16),
    "eval_real_images": Default(50_000, "the CIFAR-10 training set", quick=256),
    "grid_images": Default(64, OURS, quick=16),
    "assignment": Default("linear", PAPER1),
    "k": Default(4, "paper 2, arXiv 2505.18521, for 32x32 images"),
    "solver": Default("scipy", PAPER1 + ": scipy on the host"),
    "distance": Default("l2", PAPER1),
    "quantize": Default(True, PAPER1 + ": float16 distances"),
}


def parse_args(argv=None):
    return common.parse_args(
        argv, __doc__, CONFIG, None, os.path.join("outputs", "ddim_cifar10")
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

    # Network and model: ddpm-torch's linear betas, epsilon target, DDIM.
    network = ki.layers.UNet(
        (args.image_size, args.image_size, 3),
        widths=args.widths,
        block_depth=args.block_depth,
        attention_resolutions=args.attention,
        dropout=args.dropout,
    )
    if args.assignment == "linear":
        assignment = ki.assignment.LinearAssignment(
            solver=args.solver, metric=args.distance, quantize=args.quantize
        )
    elif args.assignment == "knn":
        assignment = ki.assignment.KNNSelection(k=args.k)
    else:
        assignment = None  # plain training
    model = ki.ImmiscibleDiffusion(
        network,
        schedule=ki.schedules.LinearBeta(1000, beta_start=1e-4, beta_end=0.02),
        prediction="epsilon",
        sampler=ki.samplers.DDIM(eta=0.0),
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
