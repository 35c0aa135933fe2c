"""Train an immiscible diffusion model on the embedded 8x8 digits.

No network needed: the data ships with scikit-learn. Writes a PNG grid of
generated digits and the saved model to the output folder.

    python examples/train_digits.py                       # defaults below
    python examples/train_digits.py --backend jax --assignment knn --steps 800

Flags:
    --backend      tensorflow | jax | torch (default: $KERAS_BACKEND, else
                   tensorflow). Sets KERAS_BACKEND before Keras is imported.
    --assignment   linear | knn | none (default: linear)
    --steps        training steps (default: 1500)
    --batch-size   batch size (default: 128)
    --output       output folder (default: outputs/digits)
    --seed         seed of weights, noise and sampling (default: 0)
"""

import argparse
import os
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backend",
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        choices=("tensorflow", "jax", "torch"),
    )
    parser.add_argument(
        "--assignment", default="linear", choices=("linear", "knn", "none")
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--output", default=os.path.join("outputs", "digits"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampling-steps", type=int, default=30)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    import keras
    import numpy as np

    import keras_immiscible as ki
    from keras_immiscible.utils.images import save_image_grid

    keras.utils.set_random_seed(args.seed)
    images = ki.data.load_digits(dtype="float32")
    assignment = None if args.assignment == "none" else args.assignment

    network = ki.layers.UNet(
        image_shape=images.shape[1:], widths=(32, 64), block_depth=2
    )
    model = ki.ImmiscibleDiffusion(
        network, assignment=assignment, seed=args.seed
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=1e-3, use_ema=True, ema_momentum=0.99
        )
    )
    steps_per_epoch = -(-len(images) // args.batch_size)
    epochs = max(1, round(args.steps / steps_per_epoch))
    print(
        f"Training on {len(images)} digits, backend={args.backend}, "
        f"assignment={args.assignment}, {epochs} epochs x "
        f"{steps_per_epoch} steps."
    )
    start = time.time()
    model.fit(
        images,
        batch_size=args.batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    train_time = time.time() - start

    os.makedirs(args.output, exist_ok=True)
    samples = model.generate(64, steps=args.sampling_steps, seed=args.seed)
    grid_path = os.path.join(args.output, "samples.png")
    save_image_grid(samples, grid_path, scale=4)
    model_path = os.path.join(args.output, "model.keras")
    model.save(model_path)
    print(
        f"Trained in {train_time:.0f} s. Samples: {grid_path}. "
        f"Model: {model_path}."
    )
    return model, np.asarray(samples)


if __name__ == "__main__":
    main()
