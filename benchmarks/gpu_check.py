"""On-device check and timing of the assignment paths and the training step.

Meant for a machine with a GPU and JAX (KERAS_BACKEND=jax): times the
XLA-compiled auction against scipy on the host, KNN selection, optax's
Hungarian solver, and the median training step of vanilla vs assigned
training on 32x32x3 images with the default UNet. Writes a JSON list of
records (first one: the header) to the path given by --output.

    KERAS_BACKEND=jax python benchmarks/gpu_check.py --output docs/benchmarks/gpu_check.json
    KERAS_BACKEND=jax python benchmarks/gpu_check.py --quick   # CPU smoke run

The auction records carry its bidding rounds, augmenting tail steps and
certified gap bound next to the true gap against scipy; scipy runs on the
reduced cost (row then column minima subtracted), and the library's host path
(`ops.linear_sum_assignment` in a jitted function: warm-start prices on the
device, scipy through `pure_callback`) is timed with and without the prices. The goal of issue 13 on a GPU: the auction at B=1024 in <= 5 ms and 10x
faster than scipy on the host.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")


def median_time(fn, repeats, sync):
    fn()  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    times.sort()
    return 1000.0 * times[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", default="gpu_check.json")
    parser.add_argument("--sizes", default="128,512,1024,2048")
    parser.add_argument("--dims", type=int, default=3072)
    parser.add_argument("--train-batches", default="128")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="B=64,128, 2 repeats, no training: checks the "
        "script end to end (e.g. on a CPU)",
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats, args.skip_train = "64,128", 2, True

    import jax
    import keras
    import numpy as np
    import scipy.optimize

    import keras_immiscible as ki
    from keras_immiscible.ops.auction import auction_assignment
    from keras_immiscible.ops.linear_sum_assignment import reduce_cost

    device = str(jax.devices()[0])
    records = [
        {
            "header": True,
            "command": " ".join(sys.argv),
            "device": device,
            "backend": keras.backend.backend(),
            "keras": keras.__version__,
            "jax": jax.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
    ]

    def emit(record):
        records.append(record)
        print(json.dumps(record), flush=True)
        with open(args.output, "w") as f:
            json.dump(records, f, indent=1)

    emit(dict(records[0]))
    records.pop(0)
    sync = lambda x: jax.block_until_ready(x)  # noqa: E731
    rng = np.random.default_rng(0)
    auction = jax.jit(auction_assignment)
    auction_info = jax.jit(lambda c: auction_assignment(c, return_info=True))
    repeats = args.repeats
    try:
        from optax.assignment import hungarian_algorithm

        hungarian = jax.jit(hungarian_algorithm)
    except ImportError:
        hungarian = None

    for b in [int(s) for s in args.sizes.split(",")]:
        images = rng.uniform(-1, 1, (b, args.dims)).astype("float32")
        noise = rng.standard_normal((b, args.dims)).astype("float32")
        cost_np = -2.0 * images @ noise.T
        cost = jax.device_put(cost_np)
        rows, cols = scipy.optimize.linear_sum_assignment(
            reduce_cost(cost_np.astype(np.float64))
        )
        optimum = cost_np[rows, cols].sum()
        identity = np.trace(cost_np)

        def gap(columns):
            columns = np.asarray(columns)
            assert sorted(columns.tolist()) == list(range(b))
            total = cost_np[np.arange(b), columns].sum()
            return float((total - optimum) / (identity - optimum))

        t_scipy = median_time(
            lambda: scipy.optimize.linear_sum_assignment(
                reduce_cost(cost_np.astype(np.float64))
            ),
            repeats,
            lambda x: x,
        )
        emit(
            {
                "method": "scipy (host, reduced cost)",
                "batch_size": b,
                "dims": args.dims,
                "median_ms": t_scipy,
                "gap": 0.0,
            }
        )
        # The library's host path from a jitted step: warm-start prices on
        # the device, then scipy through pure_callback (and without them).
        for label, iterations in (("warm start", None), ("no warm start", 0)):
            kwargs = {} if iterations is None else {"sinkhorn_iterations": iterations}
            solve = jax.jit(lambda c, kw=kwargs: ki.ops.linear_sum_assignment(c, **kw))
            emit(
                {
                    "method": f"ops scipy, {label} (jit, pure_callback)",
                    "batch_size": b,
                    "dims": args.dims,
                    "median_ms": median_time(lambda s=solve: s(cost), repeats, sync),
                    "gap": gap(solve(cost)),
                }
            )
        t_auction = median_time(lambda: auction(cost), repeats, sync)
        columns, info = auction_info(cost)
        emit(
            {
                "method": "auction (XLA)",
                "batch_size": b,
                "dims": args.dims,
                "median_ms": t_auction,
                "gap": gap(auction(cost)),
                "rounds": int(info["rounds"]),
                "tail_steps": int(info["tail_steps"]),
                "gap_bound": float(info["gap_bound"]),
                "converged": bool(info["converged"]),
                "vs_scipy": t_auction / t_scipy,
            }
        )
        # Whole LinearAssignment on device data: cost matmul + auction + gather.
        x_dev = jax.device_put(images.reshape(b, 32, 32, 3))
        for name, assigner in [
            ("LinearAssignment(auction)", ki.assignment.LinearAssignment("auction")),
            (
                "LinearAssignment(scipy) via pure_callback",
                ki.assignment.LinearAssignment("scipy"),
            ),
            ("KNNSelection(k=4)", ki.assignment.KNNSelection(4)),
            ("KNNSelection(k=8)", ki.assignment.KNNSelection(8)),
        ]:
            step = jax.jit(lambda x, key, a=assigner: a(x, seed=key, return_gain=True))
            key = jax.random.PRNGKey(0)  # keras accepts a JAX key as seed
            try:
                t = median_time(lambda: step(x_dev, key), repeats, sync)
                gain = float(step(x_dev, key)[1])
                emit(
                    {
                        "method": name,
                        "batch_size": b,
                        "dims": args.dims,
                        "median_ms": t,
                        "assignment_gain": gain,
                    }
                )
            except Exception as e:  # noqa: BLE001
                emit({"method": name, "batch_size": b, "error": repr(e)[:300]})
        if hungarian is not None and b <= 1024:
            try:
                t_h = median_time(lambda: hungarian(cost), min(3, repeats), sync)
                r, c = hungarian(cost)
                columns = np.empty(b, int)
                columns[np.asarray(r)] = np.asarray(c)
                emit(
                    {
                        "method": "optax hungarian (XLA)",
                        "batch_size": b,
                        "dims": args.dims,
                        "median_ms": t_h,
                        "gap": gap(columns),
                    }
                )
            except Exception as e:  # noqa: BLE001
                emit(
                    {
                        "method": "optax hungarian (XLA)",
                        "batch_size": b,
                        "error": repr(e)[:300],
                    }
                )

    if args.skip_train:
        return
    for b in [int(s) for s in args.train_batches.split(",")]:
        steps = 50
        data = rng.uniform(0, 1, (b * steps, 32, 32, 3)).astype("float32")
        arms = [
            ("vanilla", None),
            ("knn k=8", "knn"),
            ("linear auction", ki.assignment.LinearAssignment("auction")),
            ("linear scipy (pure_callback)", "linear"),
            ("vanilla (again)", None),
        ]
        results = {}
        for name, assignment in arms:
            keras.utils.set_random_seed(0)
            net = ki.layers.UNet(image_shape=(32, 32, 3))
            model = ki.ImmiscibleDiffusion(net, assignment=assignment, seed=0)
            model.compile(optimizer=keras.optimizers.AdamW(1e-4))
            model.fit(data[: 2 * b], batch_size=b, epochs=1, verbose=0)
            epochs = []
            for _ in range(5):
                start = time.perf_counter()
                model.fit(data, batch_size=b, epochs=1, verbose=0)
                epochs.append((time.perf_counter() - start) / steps)
            epochs.sort()
            results[name] = 1000.0 * epochs[2]
            emit(
                {
                    "method": name,
                    "batch_size": b,
                    "image_shape": [32, 32, 3],
                    "median_step_ms": results[name],
                    "ratio": results[name] / results["vanilla"],
                }
            )


if __name__ == "__main__":
    main()
