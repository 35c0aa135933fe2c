"""Multi-device scenarios, run in a subprocess by tests/test_multi_device.py.

Usage: `KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=4
python tests/multi_device_worker.py OUT.npz` (or `KERAS_BACKEND=tensorflow`,
which splits the CPU into 4 logical devices itself). Writes raw results
(data, candidate noise, assigned noise, loss histories, op names) to
OUT.npz; the test computes the references (scipy) and asserts.
"""

import json
import os
import sys
import time

import numpy as np

DEVICES = 4
BATCH = 16
SEED = 7

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_immiscible as ki  # noqa: E402
from keras_immiscible.assignment import linear_assignment  # noqa: E402
from keras_immiscible.backend import distribution  # noqa: E402

BACKEND = keras.backend.backend()
DEVICE_LIST = distribution.host_devices(DEVICES)
if BACKEND == "tensorflow":
    import tensorflow as tf

    # One strategy per device count for the whole process: TensorFlow's
    # collective instance keys restart with every new MirroredStrategy.
    STRATEGIES = {n: tf.distribute.MirroredStrategy(DEVICE_LIST[:n]) for n in (4,)}
else:
    import jax


SHAPE = (8, 8, 1)
RESULTS = {}
COST_DTYPES = []


def _recording_cost(*args, **kwargs):
    cost = _ORIGINAL_COST(*args, **kwargs)
    COST_DTYPES.append(keras.backend.standardize_dtype(cost.dtype))
    return cost


_ORIGINAL_COST = linear_assignment.assignment_cost
linear_assignment.assignment_cost = _recording_cost


def images():
    return ki.data.load_digits()[: 2 * BATCH]


def tiny_network():
    noisy = keras.Input(SHAPE)
    level = keras.Input((1, 1, 1))
    h = keras.layers.Conv2D(4, 3, padding="same")(noisy)
    h = h + keras.layers.Dense(4)(level)
    out = keras.layers.Conv2D(1, 3, padding="same")(keras.ops.relu(h))
    return keras.Model([noisy, level], out)


class Place:
    """Where a run happens: 1 device, or `DEVICES` devices."""

    def __init__(self, devices):
        self.devices = devices

    def __enter__(self):
        if BACKEND == "jax":
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=DEVICE_LIST[: self.devices])
                if self.devices > 1
                else None
            )
            self._scope = None
        else:
            strategy = (
                STRATEGIES[self.devices]
                if self.devices > 1
                else tf.distribute.get_strategy()
            )
            self._scope = strategy.scope()
            self._scope.__enter__()
        return self

    def __exit__(self, *exc):
        if self._scope is not None:
            self._scope.__exit__(*exc)
        if BACKEND == "jax":
            keras.distribution.set_distribution(None)


def fit(
    devices,
    assignment,
    cls=ki.ImmiscibleFlowMatching,
    steps=2,
    jit_compile="auto",
    policy="float32",
):
    keras.config.set_dtype_policy(policy)
    try:
        with Place(devices):
            keras.utils.set_random_seed(0)
            model = cls(tiny_network(), assignment=assignment, seed=0)
            model.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=jit_compile)
            history = model.fit(
                images()[:BATCH],
                batch_size=BATCH,
                epochs=steps,
                verbose=0,
                shuffle=False,
            )
    finally:
        keras.config.set_dtype_policy("float32")
    return model, np.asarray(history.history["loss"], np.float64)


def assign_direct(devices, assigner):
    """The assigner on the global batch of `images()`, under `devices`.

    Returns (data, candidates, noise) as numpy, the data already in
    [-1, 1]; inside a compiled function (jax.jit / tf.function under
    strategy.run), as in a training step.
    """
    data = images()[:BATCH] * 2.0 - 1.0
    candidates = keras.ops.convert_to_numpy(keras.random.normal(data.shape, seed=SEED))
    with Place(devices):
        if BACKEND == "jax":
            if devices > 1:
                layout = keras.distribution.distribution().get_data_layout(data.shape)
                sharded = keras.distribution.distribute_tensor(data, layout)
            else:
                sharded = data
            noise = jax.jit(lambda d: assigner(d, seed=SEED))(sharded)
            noise = np.asarray(noise)
        else:
            strategy = STRATEGIES[devices] if devices > 1 else None
            if strategy is None:
                noise = tf.function(lambda d: assigner(d, seed=SEED))(data)
                noise = noise.numpy()
            else:
                dataset = strategy.experimental_distribute_dataset(
                    tf.data.Dataset.from_tensor_slices(data).batch(len(data))
                )
                batch = next(iter(dataset))
                per_replica = tf.function(
                    lambda d: strategy.run(lambda x: assigner(x, seed=SEED), (d,))
                )(batch)
                noise = np.concatenate(
                    [
                        t.numpy()
                        for t in strategy.experimental_local_results(per_replica)
                    ]
                )
    return data, candidates, noise


def replica_draws():
    """Each replica's uniform draw from one ReplicaSeedGenerator; a plain one."""
    strategy = STRATEGIES[DEVICES]
    with strategy.scope():
        generator = distribution.ReplicaSeedGenerator(5)
    per_replica = tf.function(
        lambda: strategy.run(lambda: keras.random.uniform((3,), seed=generator))
    )()
    draws = np.stack(
        [t.numpy() for t in strategy.experimental_local_results(per_replica)]
    )
    plain = keras.random.uniform((3,), seed=keras.random.SeedGenerator(5))
    return draws, keras.ops.convert_to_numpy(plain)


def host_calls_in_step(model, x):
    """Names of host-callback ops in the model's traced training step."""
    if BACKEND == "jax":
        state = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.optimizer.variables],
            [v.value for v in model.metrics_variables],
        )
        # Fresh functions: JAX caches traces by function, and a bound
        # method of the same model would hit the previous assigner's trace.
        jitted = jax.jit(lambda s, d: model.train_step(s, d))
        lowered = model._keras_step(jitted.lower, state, (x,))
        compiled_text = lowered.compile().as_text()
        jaxpr = str(
            model._keras_step(
                jax.make_jaxpr(lambda s, d: model.train_step(s, d)), state, (x,)
            )
        )
        names = []
        if "pure_callback" in jaxpr:
            names.append("jaxpr:pure_callback")
        if "callback" in compiled_text:
            names.append("hlo:callback")
        return names
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:
        # The per-replica step, as Keras runs it (strategy.run).
        batch = next(
            iter(
                strategy.experimental_distribute_dataset(
                    tf.data.Dataset.from_tensor_slices(x).batch(BATCH)
                )
            )
        )
        step = tf.function(
            lambda d: strategy.run(
                lambda b: model._keras_step(model.train_step, (b,)), (d,)
            )
        )
        return sorted(_tf_py_ops(step.get_concrete_function(batch).graph))
    spec = tf.TensorSpec((BATCH,) + SHAPE, tf.float32)
    step = tf.function(
        lambda d: model._keras_step(model.train_step, (d,)),
        jit_compile=bool(model.jit_compile),
    )
    concrete = step.get_concrete_function(spec)
    if model.jit_compile:
        # Compiles the step with XLA (raises if it cannot).
        step.experimental_get_compiler_ir(tf.constant(x))(stage="hlo")
    return sorted(_tf_py_ops(concrete.graph))


def _tf_py_ops(graph):
    found = set()
    for op in graph.get_operations():
        if "PyFunc" in op.type or "NumpyFunction" in op.type:
            found.add(op.type)
    for function in graph._functions.values():
        for node in function.definition.node_def:
            if "PyFunc" in node.op:
                found.add(node.op)
    return found


_LAST_MARK = []


def _mark(what):
    """Prints the CPU time since the previous mark (to stderr)."""
    now = time.process_time()
    if _LAST_MARK:
        print(f"[worker] {what}: {now - _LAST_MARK[-1]:.1f} s CPU", file=sys.stderr)
    _LAST_MARK.append(now)


def main(out):
    _mark("start")
    x = images()[:BATCH]
    # 1. Global scope: 4 devices == 1 device (noise and loss history).
    for solver in ("scipy", "auction"):
        assigner = ki.assignment.LinearAssignment(solver=solver)
        for devices in (1, DEVICES):
            data, candidates, noise = assign_direct(devices, assigner)
            RESULTS[f"global_{solver}_{devices}_noise"] = noise
        RESULTS["data"], RESULTS["candidates"] = data, candidates
    _mark("global assign")
    # 2. Replica scope: per shard.
    for solver in ("scipy", "auction"):
        assigner = ki.assignment.LinearAssignment(solver=solver, scope="replica")
        _, _, noise = assign_direct(DEVICES, assigner)
        RESULTS[f"replica_{solver}_noise"] = noise
    _mark("replica assign")
    # 3. Loss histories, 1 vs 4 devices, global scope (scipy on the host).
    #    Random timesteps: every per-sample draw of the model is made for
    #    the global batch and sliced per replica on TF
    #    (`distribution.draw_batch_rows`), so the runs are the same.
    for devices in (1, DEVICES):
        _, loss = fit(devices, "linear", steps=3)
        RESULTS[f"loss_global_{devices}"] = loss
    _mark("global fits")
    if BACKEND == "tensorflow":
        # The replicas' own draws of the model's seed generator.
        RESULTS["replica_draws"], RESULTS["plain_draw"] = replica_draws()
    _mark("replica draws")
    _, loss = fit(DEVICES, ki.assignment.LinearAssignment(scope="replica"))
    RESULTS["loss_replica_fit"] = loss
    _mark("replica fit")
    # 4. XLA-pure step: auction and KNN, no host callback; scipy as control.
    #    One fit with the auction; the other assigners' steps are traced
    #    (and compiled with XLA) on the same model. TF: XLA on one device
    #    (TensorFlow cannot XLA-compile a MirroredStrategy step over
    #    virtual CPU devices, see the test), and the per-replica step
    #    under MirroredStrategy, traced.
    assigners = (
        ("auction", ki.assignment.LinearAssignment(solver="auction")),
        ("knn", ki.assignment.KNNSelection(k=4)),
        ("scipy", ki.assignment.LinearAssignment(solver="scipy")),
    )
    devices = DEVICES if BACKEND == "jax" else 1
    model, loss = fit(devices, assigners[0][1], steps=1, jit_compile=True)
    RESULTS["xla_auction_loss"] = loss
    if BACKEND == "tensorflow":
        mirrored, loss = fit(DEVICES, assigners[0][1], steps=1)
        RESULTS["mirrored_auction_loss"] = loss
    for name, assigner in assigners:
        model.assigner = assigner
        jit = BACKEND == "jax" or not assigner.on_host
        model.jit_compile = jit
        RESULTS[f"xla_{name}_jit"] = np.asarray(jit)
        with Place(devices):
            RESULTS[f"xla_{name}_host_ops"] = np.asarray(
                json.dumps(host_calls_in_step(model, x))
            )
        if BACKEND == "tensorflow":
            mirrored.assigner = assigner
            with Place(DEVICES):
                RESULTS[f"mirrored_{name}_host_ops"] = np.asarray(
                    json.dumps(host_calls_in_step(mirrored, x))
                )
    _mark("xla")
    # 5. Mixed precision under distribution: the cost stays float32.
    policies = ["mixed_bfloat16"]
    if BACKEND == "tensorflow":
        policies.append("mixed_float16")
    for policy in policies:
        del COST_DTYPES[:]
        model, loss = fit(DEVICES, "linear", steps=2, policy=policy)
        RESULTS[f"mixed_{policy}_loss"] = loss
        RESULTS[f"mixed_{policy}_cost_dtypes"] = np.asarray(
            json.dumps(sorted(set(COST_DTYPES)))
        )
        RESULTS[f"mixed_{policy}_optimizer"] = np.asarray(
            type(model.optimizer).__name__
        )
    _mark("mixed")
    # 6. TF: with_assigned_noise feeds a MirroredStrategy fit.
    if BACKEND == "tensorflow":
        dataset = ki.data.with_assigned_noise(
            tf.data.Dataset.from_tensor_slices(images()).batch(BATCH),
            assignment="linear",
            seed=3,
            epochs=2,
        )
        with Place(DEVICES):
            keras.utils.set_random_seed(0)
            model = ki.ImmiscibleFlowMatching(tiny_network(), assignment=None, seed=0)
            model.compile(optimizer=keras.optimizers.SGD(0.05))
            history = model.fit(dataset, epochs=2, verbose=0)
        RESULTS["pipeline_loss"] = np.asarray(history.history["loss"])
        RESULTS["pipeline_gain"] = np.asarray(history.history["assignment_gain"])
        first = next(iter(dataset))
        RESULTS["pipeline_images"] = first["images"].numpy()
        RESULTS["pipeline_noise"] = first["noise"].numpy()
    _mark("pipeline")
    np.savez(out, **RESULTS)


if __name__ == "__main__":
    main(sys.argv[1])
