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

import argparse
import contextlib
import os
import shutil
import sys
import time

OFFICIAL = "official code, Linear_Assignment-stable_diffusion/train_scratch.sh"
OFFICIAL_KNN = "official code, KNN-stable_diffusion/conditional_scratch_train_sd.py"
DIFFUSERS_UNET = "diffusers UNet2DConditionModel defaults, built by the official code"
DIT_CLASSES = (207, 360, 387, 974, 88, 979, 417, 279)
NUM_CLASSES = 1000

# name: (default, --quick value, source). argparse leaves the flags at None,
# and `parse_args` fills in the column of the mode.
DEFAULTS = {
    "image_size": (256, 16, OFFICIAL + " (--resolution=256)"),
    "batch_size": (2048, 16, OFFICIAL + " (256 per GPU x 8 GPUs)"),
    "steps": (20_000, 4, OFFICIAL + " (--max_train_steps=20000)"),
    "eval_every": (2500, 2, OFFICIAL + " (--checkpointing_steps=2500)"),
    "learning_rate": (1e-4, 1e-3, OFFICIAL + " (constant, no warm-up)"),
    "weight_decay": (1e-2, 1e-2, "the diffusers script's AdamW default"),
    "grad_clip": (1.0, 1.0, OFFICIAL + " (--max_grad_norm=1)"),
    "ema": (0.9999, 0.9, "diffusers EMAModel default decay (--use_ema)"),
    "assignment": ("linear", "linear", "paper 1; knn: " + OFFICIAL_KNN),
    "k": (64, 64, OFFICIAL_KNN + " (k = 64)"),
    "label_dropout": (0.1, 0.1, "Ho & Salimans 2022; DiT class_dropout_prob"),
    "widths": ((320, 640, 1280, 1280), (8, 16), DIFFUSERS_UNET),
    "block_depth": (2, 1, DIFFUSERS_UNET + " (layers_per_block=2)"),
    "attention": ((32, 16, 8), (), DIFFUSERS_UNET + " (3 attention levels)"),
    "heads": (8, 1, DIFFUSERS_UNET + " (attention_head_dim=8)"),
    "groups": (32, 4, DIFFUSERS_UNET + " (norm_num_groups=32)"),
    "embedding_dims": (320, 8, DIFFUSERS_UNET + " (320-dim time embedding)"),
    "sampling_steps": (20, 2, "official generate.py (20 steps, PNDM there)"),
    "guidance_scales": (
        (1.0, 3.0, 7.5),
        (1.0, 3.0),
        "1: conditional; 7.5: diffusers' default, official sampling",
    ),
    "grid_classes": (DIT_CLASSES, DIT_CLASSES[:2], "DiT sample.py's classes"),
    "images_per_class": (4, 2, "this example's choice"),
    "shuffle_buffer": (10_000, 64, "this example's choice"),
    "mixed_precision": ("float16", "float32", OFFICIAL + ' (--mixed_precision="fp16")'),
    "seed": (42, 42, OFFICIAL + " (--seed=42)"),
}


def int_tuple(text):
    return tuple(int(v) for v in text.split(",") if v.strip())


def float_tuple(text):
    return tuple(float(v) for v in text.split(",") if v.strip())


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )

    def flag(name, kind, help_text, **kwargs):
        default, quick, source = DEFAULTS[name]
        show = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else v  # noqa: E731
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"{help_text}; default {show(default)} ({source}); "
            f"--quick: {show(quick)}",
            **kwargs,
        )

    parser.add_argument(
        "--backend",
        choices=("tensorflow", "jax", "torch"),
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run (< 1 min on a CPU): mock data, tiny "
        "autoencoder and UNet, 4 steps",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT/backup (same flags)"
    )
    parser.add_argument(
        "--output",
        default=os.path.join("outputs", "latent_imagenet"),
        help="output folder (default: outputs/latent_imagenet)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="tensorflow-datasets data directory holding the "
        "prepared imagenet2012 (default: $TFDS_DATA_DIR or "
        "~/tensorflow_datasets); nothing is downloaded",
    )
    parser.add_argument(
        "--vae-weights",
        default="download",
        help="SD VAE weights: 'download' (keras-cv, once), a "
        "folder with vae_encoder.h5 and kcv_decoder.h5, or "
        "'none' (random weights: smoke tests only)",
    )
    parser.add_argument(
        "--per-class",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="linear assignment within each class of the batch "
        "(default: off, the papers assign across classes; see "
        "docs/benchmarks/per_class_assignment.md)",
    )
    flag("image_size", int, "image side (a multiple of 8 with the SD VAE)")
    flag("batch_size", int, "global batch size")
    flag("steps", int, "optimizer steps (rounded up to whole --eval-every)")
    flag("eval_every", int, "steps between grids, checkpoints and backups")
    flag("learning_rate", float, "constant learning rate")
    flag("weight_decay", float, "AdamW weight decay")
    flag("grad_clip", float, "global gradient-norm clipping")
    flag("ema", float, "EMA decay of the weights (warm-up (1+t)/(10+t))")
    flag("assignment", str, "noise assignment", choices=("linear", "knn", "none"))
    flag("k", int, "KNN candidates per latent")
    flag("label_dropout", float, "fraction of labels dropped (for guidance)")
    flag("widths", int_tuple, "UNet widths per resolution")
    flag("block_depth", int, "residual blocks per resolution")
    flag("attention", int_tuple, "latent resolutions with attention ('' for none)")
    flag("heads", int, "attention heads")
    flag("groups", int, "normalization groups")
    flag("embedding_dims", int, "sinusoidal time-embedding size")
    flag("sampling_steps", int, "DDIM steps of the grids")
    flag("guidance_scales", float_tuple, "guidance scales, one grid each")
    flag("grid_classes", int_tuple, "classes of the grid rows")
    flag("images_per_class", int, "images per class in a grid")
    flag("shuffle_buffer", int, "shuffle buffer (images)")
    flag(
        "mixed_precision",
        str,
        "compute dtype of the networks",
        choices=("float16", "bfloat16", "float32"),
    )
    flag("seed", int, "seed of weights, noise, data order and sampling")
    return parser


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    for name, (default, quick, _) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
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
    backup_dir = os.path.join(args.output, "backup")
    if args.resume and not os.path.exists(
        os.path.join(backup_dir, "training_metadata.json")
    ):
        raise SystemExit(
            f"--resume: no backup in {backup_dir!r}; run without --resume "
            "first, with the same --output."
        )
    os.environ["KERAS_BACKEND"] = args.backend  # before Keras is imported
    import keras
    import numpy as np

    import keras_immiscible as ki
    from keras_immiscible.utils.images import save_image_grid

    start = time.time()
    steps_per_epoch = args.eval_every
    epochs = max(1, -(-args.steps // steps_per_epoch))
    # The backup of `--resume` (restored by `fit`), or a fresh start.
    backup = ki.callbacks.BackupAndRestore(
        backup_dir, save_freq="epoch", delete_checkpoint=False
    )
    initial_epoch = 0
    if args.resume:
        initial_epoch = backup.initial_epoch
        print(f"Resuming {backup_dir} at step {backup.initial_step}.", flush=True)
    elif os.path.exists(backup_dir):
        print(
            f"Note: starting afresh; the run in {args.output} is overwritten "
            "(--resume continues it).",
            flush=True,
        )
        shutil.rmtree(backup_dir)  # or `fit` would restore it
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

        class StepLogger(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if logs is not None:
                    logs["step"] = int(
                        keras.ops.convert_to_numpy(self.model.optimizer.iterations)
                    )

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
            StepLogger(),
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
        f"Trained to step {steps} in {time.time() - start:.1f} s; outputs in "
        f"{args.output}.",
        flush=True,
    )
    return model


if __name__ == "__main__":
    main()
