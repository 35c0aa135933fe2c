"""Median training-step time of vanilla vs linear vs knn on the digits.

Same network as examples/train_digits.py, batch 128, same backend and run.
Each arm is warmed up (compiled) first; then the arms are timed in turns
(round robin) so that machine noise hits them alike. Appends one JSON record
per arm to --output.

    KERAS_BACKEND=tensorflow python benchmarks/digits_step_time.py
"""

import argparse
import datetime
import json
import os
import platform
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", default="docs/benchmarks/digits_step_time.json")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import keras
    import numpy as np

    import keras_immiscible as ki

    images = ki.data.load_digits()
    b = args.batch_size
    steps = len(images) // b
    images = images[: steps * b]
    arms = {"vanilla": None, "linear": "linear", "knn": "knn"}
    models = {}
    for name, assignment in arms.items():
        keras.utils.set_random_seed(0)
        net = ki.layers.UNet(image_shape=(8, 8, 1), widths=(32, 64), block_depth=2)
        model = ki.ImmiscibleDiffusion(net, assignment=assignment, seed=0)
        model.compile(
            optimizer=keras.optimizers.AdamW(1e-3, use_ema=True, ema_momentum=0.99)
        )
        model.fit(images[: 2 * b], batch_size=b, epochs=1, verbose=0)
        models[name] = model
    times = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(images, batch_size=b, epochs=1, verbose=0, shuffle=False)
            times[name].append(1000.0 * (time.perf_counter() - start) / steps)
    records = []
    if os.path.exists(args.output):
        with open(args.output) as f:
            records = json.load(f)
    header = {
        "header": True,
        "command": f"KERAS_BACKEND={keras.backend.backend()} python benchmarks/digits_step_time.py",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    records.append(header)
    vanilla = float(np.median(times["vanilla"]))
    for name in arms:
        median = float(np.median(times[name]))
        record = {
            "method": name,
            "backend": keras.backend.backend(),
            "batch_size": b,
            "median_ms": median,
            "ratio": median / vanilla,
            "epoch_ms_per_step": times[name],
        }
        records.append(record)
        print(json.dumps(record))
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
