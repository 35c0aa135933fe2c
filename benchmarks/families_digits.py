"""Digits FID/KID of every model family, with and without assignment.

Trains `ImmiscibleDiffusion` (DDIM), `ImmiscibleFlowMatching` (Euler) and
`ImmiscibleConsistency` (one- and two-step sampling) on the embedded 8x8
digits for the same short budget, once per assigner (none, linear, knn) and
seed, then measures FID and KID of generated digits against the test split in
the digits-classifier feature space. Same network, optimizer, batch, seeds and
sampling seed in every arm.

    python benchmarks/families_digits.py                 # defaults below
    python benchmarks/families_digits.py --steps 200 --seeds 0   # a quick look

Writes docs/benchmarks/families_digits.{json,md}: a header record (command,
machine, date), then one record per (family, method, seed, sampler steps).
"""

import argparse
import json
import os
import platform
import sys
import time

ARMS = ("none", "linear", "knn")
FAMILIES = ("diffusion", "flow_matching", "consistency")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backend", default="torch", choices=("tensorflow", "jax", "torch")
    )
    parser.add_argument(
        "--families", nargs="+", default=list(FAMILIES), choices=FAMILIES
    )
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--output", default=os.path.join("docs", "benchmarks"))
    return parser.parse_args(argv)


def build(family, assignment, seed, total_steps):
    import keras_immiscible as ki

    network = ki.layers.UNet(image_shape=(8, 8, 1), widths=(32, 64), block_depth=2)
    if family == "diffusion":
        return ki.ImmiscibleDiffusion(network, assignment=assignment, seed=seed), {
            "ddim30": 30
        }
    if family == "flow_matching":
        return ki.ImmiscibleFlowMatching(network, assignment=assignment, seed=seed), {
            "euler30": 30
        }
    model = ki.ImmiscibleConsistency(
        network,
        assignment=assignment,
        total_training_steps=total_steps,
        seed=seed,
    )
    return model, {"1step": 1, "2step": 2}


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    import keras

    import keras_immiscible as ki

    if args.backend == "torch":
        import torch

        # Small eager ops: threads only wait on each other on a busy CPU.
        torch.set_num_threads(1)
    train = ki.data.load_digits(split="train")
    test = ki.data.load_digits(split="test")
    steps_per_epoch = len(train) // args.batch_size
    epochs = max(1, round(args.steps / steps_per_epoch))
    records = [
        {
            "record": "header",
            "command": "python " + " ".join([sys.argv[0]] + sys.argv[1:]),
            "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "backend": args.backend,
            "keras": keras.__version__,
            "train_steps": epochs * steps_per_epoch,
            "batch_size": args.batch_size,
            "optimizer": "AdamW(1e-3, use_ema=True, ema_momentum=0.99)",
            "data": "embedded 8x8 digits, train split; metrics vs the test split",
        }
    ]
    for family in args.families:
        for seed in args.seeds:
            for arm in args.arms:
                assignment = None if arm == "none" else arm
                keras.utils.set_random_seed(seed)
                model, samplings = build(
                    family, assignment, seed, epochs * steps_per_epoch
                )
                model.compile(
                    optimizer=keras.optimizers.AdamW(
                        1e-3, use_ema=True, ema_momentum=0.99
                    )
                )
                start = time.time()
                history = model.fit(
                    train,
                    batch_size=args.batch_size,
                    epochs=epochs,
                    verbose=0,
                    shuffle=True,
                )
                train_s = time.time() - start
                for name, sampling_steps in samplings.items():
                    scores = ki.metrics.evaluate_generator(
                        model,
                        test,
                        metrics=("fid", "kid"),
                        num_images=args.num_samples,
                        steps=sampling_steps,
                        seed=1234,
                        feature_extractor="digits",
                        verbose=0,
                    )
                    record = {
                        "family": family,
                        "method": arm,
                        "backend": args.backend,
                        "batch_size": args.batch_size,
                        "seed": seed,
                        "step": epochs * steps_per_epoch,
                        "sampler": name,
                        "fid": float(scores["fid"]),
                        "kid": float(scores["kid"]),
                        "final_loss": float(history.history["loss"][-1]),
                        "assignment_gain": float(
                            history.history["assignment_gain"][-1]
                        ),
                        "train_seconds": round(train_s, 1),
                    }
                    records.append(record)
                    print(json.dumps(record), flush=True)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "families_digits.json"), "w") as f:
        json.dump(records, f, indent=1)
    with open(os.path.join(args.output, "families_digits.md"), "w") as f:
        f.write(table(records))
    print(table(records))


def table(records):
    import numpy as np

    header = records[0]
    rows = [r for r in records if r.get("record") != "header"]
    lines = [
        "# Digits FID/KID per model family, with and without assignment",
        "",
        f"`{header['command']}` on {header['machine']}, {header['date']}, "
        f"Keras {header['keras']} ({header['backend']}). "
        f"{header['train_steps']} training steps at batch "
        f"{header['batch_size']}, {header['optimizer']}; {header['data']}. "
        "FID/KID in the digits-classifier feature space (lower is better; "
        "KID can be negative, it is an unbiased estimate). Mean over seeds, "
        "with each seed's value in brackets.",
        "",
        "| family | sampler | method | FID | KID | assignment_gain |",
        "|---|---|---|---|---|---|",
    ]
    keys = []
    for r in rows:
        key = (r["family"], r["sampler"], r["method"])
        if key not in keys:
            keys.append(key)
    for family, sampler, method in keys:
        sel = [
            r
            for r in rows
            if (r["family"], r["sampler"], r["method"]) == (family, sampler, method)
        ]
        fids = [r["fid"] for r in sel]
        kids = [r["kid"] for r in sel]
        gain = np.mean([r["assignment_gain"] for r in sel])
        lines.append(
            f"| {family} | {sampler} | {method} | {np.mean(fids):.2f} "
            f"({', '.join(f'{v:.2f}' for v in fids)}) | {np.mean(kids):.3f} "
            f"({', '.join(f'{v:.3f}' for v in kids)}) | {gain:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
