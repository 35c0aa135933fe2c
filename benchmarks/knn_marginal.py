"""KNN's noise marginal: per-pixel mean and std of KNN-selected noise.

`KNNSelection(k)` keeps, for every image, the nearest of k Gaussian
candidates, so the noise a KNN-trained model sees is not N(0, I) (design
notes, "KNN's marginal"), while `generate` starts from N(0, I) unless asked
for `initial_noise="matched"`. This script measures how far the selected
noise is from N(0, I) on the bundled digits.

For every image size S (`keras_immiscible.data.load_digits(image_size=S)`,
nearest upsampling, scaled to [-1, 1] as the models do) and every k, it draws
`--batches` batches of `--batch-size` images (without replacement within a
batch, from a fixed numpy seed per batch), selects noise with the library's
`KNNSelection(k)` (the same call `compute_loss` makes; eagerly, on the chosen
Keras backend, from a fixed seed per (size, k, batch)), and reports over all
selected noises (batches x batch size samples per pixel):

- `mean_avg`: the average over pixels of the per-pixel mean;
- `mean_min`, `mean_max`: the smallest and largest per-pixel mean;
- `mean_rms`: the root mean square over pixels of the per-pixel mean;
- `mean_rms_excess`: `mean_rms` less the sampling error,
  `sqrt(max(mean_rms^2 - mean(std^2) / n, 0))` with n samples per pixel:
  an estimate of the RMS of the true per-pixel mean, and `shift_norm`,
  `mean_rms_excess * sqrt(D)`: the L2 norm of the mean shift over the image;
- `std_avg`, `std_min`, `std_max`: the same for the per-pixel std;
- `background_mean`: the average per-pixel mean over the background pixels
  (those whose data-set mean is below -0.95, i.e. almost always -1), and
  `background_pixels`, how many there are;
- `corr_data_mean`: the correlation over pixels between the noise's
  per-pixel mean and the data's;
- `assignment_gain`: the mean over batches of the relative reduction of the
  mean image-noise L2 distance against the first candidate (the model's
  logged `assignment_gain`).

k = 1 is plain N(0, I) noise through the same path: its row is the sampling
error of the statistics (e.g. a per-pixel mean over 2,560 samples has a
standard error of 0.020, so its min/max over 1,024 pixels reach about
+-0.065 by chance alone).

A batch-centred variant (selecting the nearest candidate to x - batch mean)
is not measured: `KNNSelection` has no such option.

    python benchmarks/knn_marginal.py                      # defaults below
    python benchmarks/knn_marginal.py --sizes 8 --ks 1,8 --batches 4

Writes docs/benchmarks/knn_marginal.{json,md}: a header record (command,
machine, date, versions), then one record per (image size, k).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

BACKGROUND = -0.95


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="8,16,32", help="digits image sizes (8, 16, 32)"
    )
    parser.add_argument(
        "--ks", default="1,2,4,8", help="candidates per image; k=1 is plain noise"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backend", default="jax", choices=("jax", "tensorflow", "torch")
    )
    parser.add_argument("--output-dir", default=os.path.join("docs", "benchmarks"))
    parser.add_argument("--name", default="knn_marginal")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.ks = [int(k) for k in args.ks.split(",") if k]
    for size in args.sizes:
        if size not in (8, 16, 32):
            parser.error(f"--sizes: 8, 16 or 32, got {size}")
    if any(k < 1 for k in args.ks):
        parser.error("--ks: integers >= 1")
    if args.batch_size < 1 or args.batches < 1:
        parser.error("--batch-size and --batches must be >= 1")
    return args


def measure(images, k, args, size):
    """The record of one (image size, k) cell."""
    import numpy as np
    from keras import ops

    from keras_immiscible.assignment import KNNSelection

    assigner = KNNSelection(k=k)
    total = np.zeros(images.shape[1:], np.float64)
    total_sq = np.zeros(images.shape[1:], np.float64)
    gains = []
    start = time.perf_counter()
    for index in range(args.batches):
        rng = np.random.default_rng([args.seed, index])
        batch = images[
            rng.choice(
                len(images), args.batch_size, replace=args.batch_size > len(images)
            )
        ]
        # One noise seed per (size, k, batch): the cells are independent.
        seed = args.seed * 1_000_003 + size * 10_007 + k * 101 + index
        noise, gain = assigner(batch, seed=seed % (2**31), return_gain=True)
        noise = ops.convert_to_numpy(noise).astype(np.float64)
        total += noise.sum(axis=0)
        total_sq += np.square(noise).sum(axis=0)
        gains.append(float(ops.convert_to_numpy(gain)))
    count = args.batches * args.batch_size
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    data_mean = images.mean(axis=0)
    background = data_mean < BACKGROUND
    record = {
        "image_size": size,
        "dims": int(np.prod(images.shape[1:])),
        "k": k,
        "samples_per_pixel": count,
        "mean_avg": float(mean.mean()),
        "mean_min": float(mean.min()),
        "mean_max": float(mean.max()),
        "mean_rms": float(np.sqrt(np.mean(np.square(mean)))),
        "mean_rms_excess": float(
            np.sqrt(
                max(np.mean(np.square(mean)) - np.mean(np.square(std)) / count, 0.0)
            )
        ),
        "shift_norm": None,
        "std_avg": float(std.mean()),
        "std_min": float(std.min()),
        "std_max": float(std.max()),
        "background_pixels": int(background.sum()),
        "background_mean": (
            float(mean[background].mean()) if background.any() else None
        ),
        "corr_data_mean": float(np.corrcoef(mean.ravel(), data_mean.ravel())[0, 1]),
        "assignment_gain": float(np.mean(gains)),
        "seconds": time.perf_counter() - start,
    }
    record["shift_norm"] = record["mean_rms_excess"] * record["dims"] ** 0.5
    return record


def write_table(path, head, rows, args):
    lines = [
        "# KNN's noise marginal on the digits",
        "",
        f"`{head['command']}` on {head['machine']}, {head['date']}, Keras "
        f"{head['versions'].get('keras', '?')} ({head['backend']}).",
        "",
        f"Per-pixel mean and std of the noise `KNNSelection(k)` keeps, over "
        f"{args.batches} batches of {args.batch_size} digits "
        f"({args.batches * args.batch_size} samples per pixel), digits in "
        "[-1, 1] (`load_digits(image_size=S)`, nearest upsampling). k = 1 is "
        "plain N(0, I) through the same path: it shows the sampling error "
        "(standard error of a per-pixel mean: "
        f"{1 / (args.batches * args.batch_size) ** 0.5:.3f}). "
        "`mean rms` is the root mean square over pixels of the per-pixel "
        "mean, `rms excess` the same less the sampling error (an estimate "
        "of the RMS of the true per-pixel mean), `shift norm` that times "
        "sqrt(D) (the L2 norm of the mean shift over the image); `bg mean` the average per-pixel mean over the background "
        f"pixels (data-set mean < {BACKGROUND}; their count in brackets); "
        "`corr` the correlation over pixels of the noise's per-pixel mean "
        "with the data's; `gain` the relative reduction of the mean "
        "image-noise distance (the model's `assignment_gain`).",
        "",
        "| size | k | mean avg | mean min | mean max | mean rms | rms excess | "
        "shift norm | "
        "std avg | "
        "std min | std max | bg mean (pixels) | corr | gain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bg = (
            "-"
            if r["background_mean"] is None
            else f"{r['background_mean']:+.3f} ({r['background_pixels']})"
        )
        lines.append(
            f"| {r['image_size']}x{r['image_size']} | {r['k']} | "
            f"{r['mean_avg']:+.4f} | {r['mean_min']:+.3f} | "
            f"{r['mean_max']:+.3f} | {r['mean_rms']:.4f} | "
            f"{r['mean_rms_excess']:.4f} | {r['shift_norm']:.2f} | "
            f"{r['std_avg']:.4f} | {r['std_min']:.3f} | {r['std_max']:.3f} | "
            f"{bg} | {r['corr_data_mean']:+.2f} | "
            f"{100 * r['assignment_gain']:.2f}% |"
        )
    lines += [
        "",
        "Not measured: the batch-centred variant (nearest candidate to "
        "x - batch mean); `KNNSelection` has no such option.",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from keras_immiscible.data import load_digits

    head = _common.header(
        "knn_marginal",
        backend=keras.backend.backend(),
        versions=_common.versions(),
        batch_size=args.batch_size,
        batches=args.batches,
        seed=args.seed,
    )
    records = [head]
    out = os.path.join(args.output_dir, args.name)
    for size in args.sizes:
        images = load_digits(image_size=size) * 2.0 - 1.0
        for k in args.ks:
            record = measure(images, k, args, size)
            records.append(record)
            print(
                f"size={size} k={k} mean_avg={record['mean_avg']:+.4f} "
                f"mean_rms={record['mean_rms']:.4f} "
                f"std_avg={record['std_avg']:.4f} "
                f"gain={100 * record['assignment_gain']:.2f}%",
                flush=True,
            )
            _common.write_json(out + ".json", records)
    write_table(out + ".md", head, records[1:], args)
    print(f"wrote {out}.json, {out}.md")


if __name__ == "__main__":
    main()
