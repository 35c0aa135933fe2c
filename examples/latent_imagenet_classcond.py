"""Class-conditional latent diffusion on ImageNet 256x256 with immiscible noise.

The Stable Diffusion experiment of the Immiscible Diffusion papers: a
class-conditional denoiser trained from scratch on the latents of Stable
Diffusion 1.x's VAE (256x256 images -> 4x32x32 latents), with the noise of
every batch assigned to its latents, by linear assignment (paper 1, Li et
al., NeurIPS 2024, arXiv 2406.12303) or KNN selection with k = 64
(paper 2, "Improved Immiscible Diffusion", arXiv 2505.18521). The official
code (github.com/yhli123/Immiscible-Diffusion) reports, after 20k steps at
batch 2048, pytorch-fid FID 17.92 for vanilla training, 16.43 with linear
assignment and 16.84 with KNN (its `Linear_Assignment-stable_diffusion/` and
`KNN-stable_diffusion/` READMEs).

What the script does: reads ImageNet's training set with
tensorflow-datasets, resizes and center-crops it to 256x256 with random
flips, encodes every batch with the frozen VAE inside the training step,
trains a class-conditional UNet (`keras_immiscible.layers.UNet`, 1000
classes plus the null label of classifier-free guidance) with
`keras_immiscible.ImmiscibleDiffusion`, and writes, every `--eval-every`
steps, one grid of samples per guidance scale (one row per class), a
checkpoint and a backup to resume from.

Run it:

    python examples/latent_imagenet_classcond.py --data-dir DIR                   # linear assignment
    python examples/latent_imagenet_classcond.py --data-dir DIR --assignment knn  # KNN, k = 64
    python examples/latent_imagenet_classcond.py --data-dir DIR --assignment none # vanilla
    python examples/latent_imagenet_classcond.py --data-dir DIR --resume          # continue a run
    python examples/latent_imagenet_classcond.py --quick    # < 1 min on a CPU, no data, no weights

Give each arm its own `--output`. The real run is a multi-accelerator job
(the official runs used 8 A800 or 4 A6000 GPUs): it needs ImageNet prepared
for tensorflow-datasets (a manual download, see below), keras-cv for the VAE
(`pip install "keras-immiscible[latent,tfds]"`) and the VAE's weights (by
default keras-cv downloads them once; offline, `--vae-weights FOLDER`). As
written it trains on one device; a global batch of 2048 at 256x256 needs
the memory of several (`keras.distribution.DataParallel` on JAX; not tested
with this script), and a smaller `--batch-size` also shrinks the batch the
linear assignment sees.

ImageNet (tfds `imagenet2012`) cannot be downloaded automatically: put
`ILSVRC2012_img_train.tar` and `ILSVRC2012_img_val.tar` (from
https://image-net.org/download-images, after registering) in a folder M and
run `tfds build imagenet2012 --data_dir DIR --manual_dir M` once. Without
the prepared data the script stops at once and says so.

The defaults are the official code's configuration
(`Linear_Assignment-stable_diffusion/train_scratch.sh` and
`conditional_scratch_train_sd.py`, "official" below; the KNN folder's are
the same but for the GPU layout), each with its source (also in `--help`):

- 256x256 images, resized (shorter side, bilinear) and center-cropped, with
  random horizontal flips: official, `--resolution=256 --center_crop
  --random_flip`.
- The SD-1.x VAE (latents 32x32x4, scaling factor 0.18215), frozen:
  official (`CompVis/stable-diffusion-v1-4`'s VAE; keras-cv's weights are
  the same v1.4 VAE). The official code encodes every batch and draws one
  posterior sample per image at every step; this library's model encodes
  on the fly too but takes the posterior mean (`ImmiscibleModel`'s
  documented choice). Encoding once (`keras_immiscible.latent.encode_dataset`)
  would fix each image's flip and take 1.28M x 16 KB = 21 GB of float32
  latents, so this script encodes on the fly.
- Global batch 2048: official (256 per GPU x 8 GPUs for linear assignment,
  128 x 4 GPUs x 4 accumulation steps for KNN). Linear assignment solves
  the whole global batch at once, as the official code does by gathering
  the noise and the distances of all GPUs on one process.
- 20,000 steps, constant learning rate 1e-4 (no warm-up), AdamW with
  betas (0.9, 0.999), epsilon 1e-8 and weight decay 1e-2, gradient-norm
  clipping 1.0, EMA of the weights with decay 0.9999: official
  (`--max_train_steps=20000 --learning_rate=1e-04 --lr_scheduler=constant
  --lr_warmup_steps=0 --max_grad_norm=1 --use_ema`, the diffusers script's
  AdamW defaults, diffusers' `EMAModel` default decay). Not verified:
  whether the official EMA had a warm-up (diffusers' `EMAModel` used
  `min(decay, (1 + t) / (10 + t))` in older releases and the constant decay
  in recent ones; the official environment pins a 0.28 development
  build). This script keeps the library's warm-up, the older formula
  (`ki.optimizers.AdamW(ema_warmup=10)`): without one, an average with
  decay 0.9999 still carries 0.9999 ** 20000 = 13.5% of the random initial
  weights at the end of the run.
- Diffusion: 1000 steps of Stable Diffusion's "scaled linear" betas
  (sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012)), epsilon
  prediction, MSE loss: official (`DDPMScheduler` of
  `CompVis/stable-diffusion-v1-4`, no `--snr_gamma`).
- Assignment: linear (exact, scipy on the host, plain L2 distances in
  float16: `LinearAssignment(metric="l2", quantize=True)`) by default;
  `--assignment knn` with k = 64: official. `--assignment none`: vanilla.
  `--per-class` assigns within each class of the batch instead of across
  it: this library's measured improvement for class-conditional models
  (`docs/benchmarks/per_class_assignment.md`: on class-conditional digits
  the global assignment ended at 1.65-1.77x vanilla's FID, per-class
  assignment at 0.97-1.01x), not the papers' recipe, so off by default.
  Untested at this scale: a batch of 2048 over 1000 classes holds about 2
  images per class (the benchmark had 10 classes), which leaves per-class
  assignment little to choose from.
- Network: this library's UNet in the layout of the official UNet
  (diffusers' `UNet2DConditionModel` defaults, which the official code
  builds from scratch): widths (320, 640, 1280, 1280), 2 residual blocks
  per resolution, attention at 32x32, 16x16 and 8x8 with 8 heads, 32
  normalization groups, a 320-dimensional sinusoidal time embedding. It is
  not that network: the official code conditions on the CLIP text
  embedding of the class name through cross-attention; here a learned class
  embedding joins the time embedding (FiLM in every block), and there is
  no attention in the middle block.
- Classifier-free guidance: `--label-dropout 0.1` (labels replaced by the
  null label in training; Ho & Salimans 2022, "Classifier-Free Diffusion
  Guidance", p_uncond 0.1 or 0.2; DiT's `class_dropout_prob=0.1`). The
  official code never drops the prompt, yet samples with diffusers'
  default guidance 7.5 against the empty prompt.
- Sampling: DDIM (eta 0, deterministic, as coupled noise needs) with 20
  steps: official `generate.py` samples 20 steps (with PNDM, which this
  library does not have). Grids at guidance 1 (the conditional model), 3
  and 7.5 (the official sampling's scale), rows of DiT's sample classes
  (207, 360, 387, 974, 88, 979, 417, 279: golden retriever, otter, red
  panda, geyser, macaw, valley, balloon, arctic fox; `sample.py` of
  facebookresearch/DiT), 4 images each: this example's choice.
- Every 2500 steps a grid, a checkpoint and a backup: official
  `--checkpointing_steps=2500`.
- Mixed precision float16: official (`--mixed_precision="fp16"`);
  `--mixed-precision float32` turns it off.
- Seed 42: official.

No FID is computed: the official code computes it after training, on
50,000 samples (50 per class, 20 sampling steps) with pytorch-fid, and this
script leaves that out.

`--quick` runs the same script in under a minute on a CPU (15-30 s of CPU
time on 2 cores, by backend), without ImageNet, keras-cv or weights:
tensorflow-datasets' mock data (`tfds.testing.mock_data`: random images of
random sizes and random ImageNet labels, read through the same pipeline), 16x16 images, a tiny untrained convolutional autoencoder
(16x16x3 <-> 4x4x4, through `keras_immiscible.latent.Autoencoder`) instead
of the SD VAE, a tiny UNet, 4 steps at batch 16, grids of 2 classes x 2
images at guidance 1 and 3. Explicit flags still win. It writes what the
real run writes, in `--output`:

- `log.csv`: epoch, step, loss, assignment_gain (`keras.callbacks.CSVLogger`);
- `samples/guidance_G/epoch_NNNN.png`: the grids (epoch = `--eval-every`
  steps), one row per class;
- `checkpoints/last.keras` (`keras.callbacks.ModelCheckpoint`) and
  `backup/` (`keras_immiscible.callbacks.BackupAndRestore`, what `--resume`
  continues from, with the same flags and a larger `--steps` to train
  longer; the tensorflow-datasets order cannot be positioned, so a resumed
  run reshuffles with `--seed` + the resumed epoch);
- after training: `samples_guidance_G.png` (EMA weights) and `model.keras`.
"""

import contextlib
import os
import sys
import time

import common
from common import Default

OFFICIAL = "official code, Linear_Assignment-stable_diffusion/train_scratch.sh"
OFFICIAL_KNN = "official code, KNN-stable_diffusion/conditional_scratch_train_sd.py"
DIFFUSERS_UNET = "diffusers UNet2DConditionModel defaults, built by the official code"
DIT_CLASSES = (207, 360, 387, 974, 88, 979, 417, 279)
NUM_CLASSES = 1000

CONFIG = {
    "image_size": Default(256, OFFICIAL + " (--resolution=256)", quick=16),
    "batch_size": Default(2048, OFFICIAL + " (256 per GPU x 8 GPUs)", quick=16),
    "steps": Default(20_000, OFFICIAL + " (--max_train_steps=20000)", quick=4),
    "eval_every": Default(2500, OFFICIAL + " (--checkpointing_steps=2500)", quick=2),
    "learning_rate": Default(1e-4, OFFICIAL + " (constant, no warm-up)", quick=1e-3),
    "weight_decay": Default(1e-2, "the diffusers script's AdamW default"),
    "grad_clip": Default(1.0, OFFICIAL + " (--max_grad_norm=1)"),
    "ema": Default(0.9999, "diffusers EMAModel default decay (--use_ema)", quick=0.9),
    "assignment": Default("linear", "paper 1; knn: " + OFFICIAL_KNN),
    "k": Default(64, OFFICIAL_KNN + " (k = 64)"),
    "per_class": Default(False, "the papers assign across classes"),
    "label_dropout": Default(0.1, "Ho & Salimans 2022; DiT class_dropout_prob"),
    "widths": Default((320, 640, 1280, 1280), DIFFUSERS_UNET, quick=(8, 16)),
    "block_depth": Default(2, DIFFUSERS_UNET + " (layers_per_block=2)", quick=1),
    "attention": Default((32, 16, 8), DIFFUSERS_UNET + " (3 levels)", quick=()),
    "heads": Default(8, DIFFUSERS_UNET + " (attention_head_dim=8)", quick=1),
    "groups": Default(32, DIFFUSERS_UNET + " (norm_num_groups=32)", quick=4),
    "embedding_dims": Default(
        320, DIFFUSERS_UNET + " (320-dim time embedding)", quick=8
    ),
    "sampling_steps": Default(
        20, "official generate.py (20 steps, PNDM there)", quick=2
    ),
    "guidance_scales": Default(
        (1.0, 3.0, 7.5),
        "1: conditional; 7.5: diffusers' default, official sampling",
        quick=(1.0, 3.0),
    ),
    "grid_classes": Default(
        DIT_CLASSES, "DiT sample.py's classes", quick=DIT_CLASSES[:2]
    ),
    "images_per_class": Default(4, "this example's choice", quick=2),
    "shuffle_buffer": Default(10_000, "this example's choice", quick=64),
    "mixed_precision": Default(
        "float16", OFFICIAL + ' (--mixed_precision="fp16")', quick="float32"
    ),
    "seed": Default(42, OFFICIAL + " (--seed=42)"),
    "data_dir": Default(None, "$TFDS_DATA_DIR or ~/tensorflow_datasets"),
    "vae_weights": Default("download", "keras-cv's, downloaded once"),
}


def float_tuple(text):
    return tuple(float(v) for v in text.split(",") if v.strip())


EXTRA_FLAGS = {
    "per_class": (
        bool,
        "linear assignment within each class of the batch "
        "(see docs/benchmarks/per_class_assignment.md)",
    ),
    "label_dropout": (common.SHARE, "fraction of labels dropped (for guidance)"),
    "heads": (common.COUNT, "attention heads"),
    "groups": (common.COUNT, "normalization groups"),
    "embedding_dims": (common.COUNT, "sinusoidal time-embedding size"),
    "guidance_scales": (float_tuple, "guidance scales, one grid each"),
    "grid_classes": (common.int_list, "ImageNet classes of the grid rows"),
    "images_per_class": (common.COUNT, "images per class in a grid"),
    "shuffle_buffer": (common.COUNT, "shuffle buffer (images)"),
    "mixed_precision": (
        str,
        "compute dtype of the networks",
        ("float16", "bfloat16", "float32"),
    ),
    "data_dir": (str, "tensorflow-datasets folder of the prepared imagenet2012"),
    "vae_weights": (
        str,
        "SD VAE weights: download, a folder with vae_encoder.h5 and "
        "kcv_decoder.h5, or none (random weights: smoke tests only)",
    ),
}


def parse_args(argv=None):
    args = common.parse_args(
        argv, __doc__, CONFIG, EXTRA_FLAGS, "latent_imagenet", real_data=False
    )
    if args.per_class and args.assignment != "linear":
        raise SystemExit("--per-class needs --assignment linear.")
    if not all(0 <= c < NUM_CLASSES for c in args.grid_classes):
        raise SystemExit(
            f"--grid-classes must be ImageNet classes 0-{NUM_CLASSES - 1}."
        )
    return args


def load_imagenet(args, initial_epoch):
    """ImageNet's training set (tfds `imagenet2012`) as batches of
    (uint8 images, int32 labels), resized, center-cropped and flipped.

    Fails at once with `keras_immiscible.data.DatasetNotPreparedError` when
    the data is not prepared in `args.data_dir`."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    import keras_immiscible as ki

    builder = tfds.builder("imagenet2012", data_dir=args.data_dir)
    try:
        source = builder.as_dataset(
            split="train",
            shuffle_files=True,
            read_config=tfds.ReadConfig(shuffle_seed=args.seed + initial_epoch),
        )
    except AssertionError as error:  # tfds asserts that the files exist
        raise ki.data.DatasetNotPreparedError(
            f"ImageNet (tensorflow-datasets 'imagenet2012') is not prepared in "
            f"{builder.data_dir!r}, and it cannot be downloaded automatically. "
            "Put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from "
            "https://image-net.org/download-images, after registering) in a "
            "folder M, run `tfds build imagenet2012 --data_dir DIR "
            "--manual_dir M` once, then pass --data-dir DIR. (--quick runs "
            f"without it.) tensorflow-datasets said: {error}"
        ) from error
    size = args.image_size

    def preprocess(example):
        # Shorter side to `size` (bilinear), then the centered square: the
        # official transforms.Resize(256) + CenterCrop(256).
        image = example["image"]
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scaled = tf.cast(tf.round(shape * size / tf.reduce_min(shape)), tf.int32)
        scaled = tf.maximum(scaled, size)
        image = tf.image.resize(image, scaled, method="bilinear", antialias=True)
        top, left = (scaled[0] - size) // 2, (scaled[1] - size) // 2
        image = image[top : top + size, left : left + size]
        image = tf.image.random_flip_left_right(image, seed=args.seed + initial_epoch)
        image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
        return tf.ensure_shape(image, (size, size, 3)), tf.cast(
            example["label"], tf.int32
        )

    # Shuffled after the crop: 10,000 images of 256x256x3 uint8 take 2 GB.
    return (
        source.repeat()
        .map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        .shuffle(args.shuffle_buffer, seed=args.seed + initial_epoch)
        .batch(args.batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def tiny_autoencoder(image_size):
    """--quick's stand-in for the SD VAE: two strided convolutions each way
    (image_size -> image_size / 4, 4 latent channels), untrained."""
    import keras

    import keras_immiscible as ki

    latent = image_size // 4
    encoder = keras.Sequential(
        [
            keras.Input((image_size, image_size, 3)),
            keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="silu"),
            keras.layers.Conv2D(4, 3, strides=2, padding="same"),
        ],
        name="encoder",
    )
    decoder = keras.Sequential(
        [
            keras.Input((latent, latent, 4)),
            keras.layers.Conv2DTranspose(
                8, 3, strides=2, padding="same", activation="silu"
            ),
            keras.layers.Conv2DTranspose(
                3, 3, strides=2, padding="same", activation="sigmoid"
            ),
        ],
        name="decoder",
    )
    return ki.latent.Autoencoder(encoder, decoder, scaling_factor=1.0)


def main(argv=None):
    # ------------------------------------------------------ hyperparameters
    args = parse_args(argv)
    backup = common.start(args)  # backend, seed, clock, the --resume backup
    import keras
    import numpy as np

    import keras_immiscible as ki
    from keras_immiscible.utils.images import save_image_grid

    steps_per_epoch = args.eval_every
    epochs = max(1, -(-args.steps // steps_per_epoch))
    # A resumed run reshuffles the data with --seed + the resumed epoch.
    initial_epoch = backup.initial_epoch if args.resume else 0
    keras.utils.set_random_seed(args.seed + initial_epoch)

    with contextlib.ExitStack() as stack:
        # ------------------------------------------------------------- data
        if args.quick:
            import tensorflow_datasets as tfds

            stack.enter_context(
                tfds.testing.mock_data(
                    num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE
                )
            )
        # First: a missing data set stops the run before anything is built.
        train = load_imagenet(args, initial_epoch)

        # ------------------------------------------------------ autoencoder
        if args.mixed_precision != "float32":
            keras.config.set_dtype_policy("mixed_" + args.mixed_precision)
        if args.quick:
            autoencoder = tiny_autoencoder(args.image_size)
        else:
            weights = None if args.vae_weights == "none" else args.vae_weights
            autoencoder = ki.latent.StableDiffusionVAE(
                weights=weights, image_size=args.image_size
            )

        # ---------------------------------------------------------- network
        network = ki.layers.UNet(
            image_shape=autoencoder.latent_shape,
            widths=args.widths,
            block_depth=args.block_depth,
            attention_resolutions=args.attention,
            embedding_dims=args.embedding_dims,
            num_classes=NUM_CLASSES,
            groups=args.groups,
            num_heads=args.heads,
        )

        # ------------------------------------------------------------ model
        if args.assignment == "linear":
            assigner = ki.assignment.LinearAssignment(
                solver="scipy", metric="l2", quantize=True, per_class=args.per_class
            )
        elif args.assignment == "knn":
            assigner = ki.assignment.KNNSelection(k=args.k)
        else:
            assigner = None
        # Stable Diffusion's "scaled linear" betas (DDPMScheduler of SD 1.x).
        betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
        model = ki.ImmiscibleDiffusion(
            network,
            schedule=ki.schedules.DiscreteSchedule(betas),
            assignment=assigner,
            prediction="epsilon",
            sampler=ki.samplers.DDIM(eta=0.0),
            loss_type="mse",
            seed=args.seed,
            autoencoder=autoencoder,
            label_dropout=args.label_dropout,
        )

        # ---------------------------------------------------------- compile
        model.compile(
            optimizer=ki.optimizers.AdamW(
                learning_rate=args.learning_rate,
                weight_decay=args.weight_decay,
                beta_1=0.9,
                beta_2=0.999,
                epsilon=1e-8,
                global_clipnorm=args.grad_clip,
                use_ema=True,
                ema_momentum=args.ema,
                ema_warmup=10,
            )
        )

        # -------------------------------------------------------- callbacks
        labels = np.repeat(
            np.asarray(args.grid_classes, "int32"), args.images_per_class
        )
        grid_options = dict(
            num_images=len(labels),
            labels=labels,
            num_rows=len(args.grid_classes),
            steps=args.sampling_steps,
            seed=args.seed,
            scale=max(1, 64 // args.image_size),
        )

        def log_step(epoch, logs):
            iterations = model.optimizer.iterations
            logs["step"] = int(keras.ops.convert_to_numpy(iterations))

        callbacks = [
            ki.callbacks.SampleGrid(
                os.path.join(
                    args.output,
                    "samples",
                    f"guidance_{scale:g}",
                    "epoch_{epoch:04d}.png",
                ),
                guidance_scale=scale,
                **grid_options,
            )
            for scale in args.guidance_scales
        ] + [
            keras.callbacks.LambdaCallback(on_epoch_end=log_step),
            keras.callbacks.CSVLogger(
                os.path.join(args.output, "log.csv"), append=args.resume
            ),
            backup,  # before ModelCheckpoint: a NaN loss stops fit here
            keras.callbacks.ModelCheckpoint(
                os.path.join(args.output, "checkpoints", "last.keras")
            ),
        ]
        os.makedirs(os.path.join(args.output, "checkpoints"), exist_ok=True)

        # -------------------------------------------------------------- fit
        print(
            f"backend={args.backend}: {args.image_size}px -> latents "
            f"{autoencoder.latent_shape}, assignment={args.assignment}"
            + (f" (k={args.k})" if args.assignment == "knn" else "")
            + (" per class" if args.per_class else "")
            + f", batch {args.batch_size}, steps "
            f"{initial_epoch * steps_per_epoch} -> {epochs * steps_per_epoch}, "
            f"output {args.output}.",
            flush=True,
        )
        model.fit(
            train,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )

    # ------------------------------------------------------ generate / save
    # After fit the model holds the EMA weights (Keras copies them in).
    for scale in args.guidance_scales:
        samples = model.generate(
            len(labels),
            steps=args.sampling_steps,
            seed=args.seed,
            labels=labels,
            guidance_scale=scale,
            verbose=0,
        )
        save_image_grid(
            samples,
            os.path.join(args.output, f"samples_guidance_{scale:g}.png"),
            num_rows=len(args.grid_classes),
            scale=grid_options["scale"],
        )
    model.save(os.path.join(args.output, "model.keras"))
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    print(
        f"Trained to step {steps} in {time.time() - args.start_time:.1f} s; outputs in "
        f"{args.output}.",
        flush=True,
    )
    return model


if __name__ == "__main__":
    main()
