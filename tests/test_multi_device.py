"""Multi-device training: scope of the assignment, JAX and TensorFlow engines.

The distributed scenarios need virtual devices that must exist before the
backend starts, so they run in a subprocess (tests/multi_device_worker.py)
with 4 devices: JAX with `XLA_FLAGS=--xla_force_host_platform_device_count=4`
under `keras.distribution.DataParallel`, TensorFlow with 4 logical CPU
devices under `tf.distribute.MirroredStrategy`. To keep each backend's run
of the suite short, the JAX scenarios run in the JAX run and the TensorFlow
ones in the TensorFlow run (PyTorch has no distribution engine in Keras:
see docs/multi_device.md). The worker writes raw arrays; the references
(scipy's optimum on the whole batch and on each shard) are computed here.

The scope option itself (serialization, errors, one-device behaviour,
mixed precision) is tested in-process under every backend.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment as scipy_lsa

import keras_immiscible as ki
from keras_immiscible.assignment import LinearAssignment

BACKEND = keras.backend.backend()
WORKER = Path(__file__).resolve().parent / "multi_device_worker.py"
DEVICES = 4


# ------------------------------------------------------------ in-process


def test_scope_is_serialized_and_checked():
    assigner = LinearAssignment(solver="auction", scope="replica")
    config = assigner.get_config()
    assert config["scope"] == "replica"
    assert LinearAssignment().scope == "global"  # the papers' recipe
    rebuilt = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(assigner)
    )
    assert type(rebuilt) is LinearAssignment
    assert rebuilt.get_config() == config
    with pytest.raises(ValueError, match="scope"):
        LinearAssignment(scope="device")


def test_scope_round_trips_in_a_keras_file(tmp_path):
    network = keras.Sequential([keras.Input((16,)), keras.layers.Dense(16)])
    noisy = keras.Input((4, 4, 1))
    level = keras.Input((1, 1, 1))
    out = keras.layers.Reshape((4, 4, 1))(
        network(keras.layers.Flatten()(noisy + level))
    )
    model = ki.ImmiscibleFlowMatching(
        keras.Model([noisy, level], out),
        assignment=LinearAssignment(solver="auction", scope="replica"),
    )
    model.compile(optimizer="sgd")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.assigner.get_config() == model.assigner.get_config()


def _squared_distance(a, b):
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _scipy_assigned(data, candidates):
    rows, cols = scipy_lsa(_squared_distance(data, candidates))
    return candidates[cols[np.argsort(rows)]]


def test_one_device_replica_scope_is_the_global_assignment():
    data = np.random.default_rng(0).uniform(-1, 1, (12, 3, 3, 1))
    data = data.astype("float32")
    glob = LinearAssignment(scope="global")(data, seed=5)
    repl = LinearAssignment(scope="replica")(data, seed=5)
    candidates = keras.ops.convert_to_numpy(keras.random.normal(data.shape, seed=5))
    expected = _scipy_assigned(data, candidates)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(glob), expected)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(repl), expected)


class _Recording(LinearAssignment):
    """Records the assigned noise (eager steps) for the mixed-precision test."""

    seen = []

    def assign(self, data, candidates, labels=None):
        noise = super().assign(data, candidates, labels)
        type(self).seen.append(
            (
                keras.backend.standardize_dtype(data.dtype),
                keras.ops.convert_to_numpy(noise),
            )
        )
        return noise


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_assigns_in_float32(policy, monkeypatch):
    from keras_immiscible.assignment import linear_assignment

    cost_dtypes = []
    original = linear_assignment.assignment_cost

    def recording_cost(*args, **kwargs):
        cost = original(*args, **kwargs)
        cost_dtypes.append(keras.backend.standardize_dtype(cost.dtype))
        return cost

    monkeypatch.setattr(linear_assignment, "assignment_cost", recording_cost)
    images = ki.data.load_digits()[:8]

    def one_step(which):
        keras.config.set_dtype_policy(which)
        try:
            keras.utils.set_random_seed(0)
            noisy = keras.Input((8, 8, 1))
            level = keras.Input((1, 1, 1))
            out = keras.layers.Conv2D(1, 3, padding="same")(noisy + level)
            model = ki.ImmiscibleFlowMatching(
                keras.Model([noisy, level], out),
                assignment=_Recording(),
                seed=0,
            )
            model.compile(optimizer="sgd", run_eagerly=True)
            _Recording.seen = []
            model.fit(images, batch_size=8, epochs=1, verbose=0)
            return _Recording.seen[-1]
        finally:
            keras.config.set_dtype_policy("float32")

    full_dtype, full_noise = one_step("float32")
    del cost_dtypes[:]
    mixed_dtype, mixed_noise = one_step(policy)
    assert mixed_dtype == full_dtype == "float32"
    assert cost_dtypes and set(cost_dtypes) == {"float32"}
    np.testing.assert_array_equal(mixed_noise, full_noise)


# --------------------------------------------------------- multi-device

WORKER_BACKEND = {"jax": "jax", "tensorflow": "tensorflow"}.get(BACKEND)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """Runs the 4-device scenarios of this run's backend; their results."""
    if WORKER_BACKEND is None:
        pytest.skip(
            "Keras has no distribution engine on PyTorch (keras.distribution "
            "is JAX-only, tf.distribute TensorFlow-only); the JAX and "
            "TensorFlow multi-device scenarios run in those backends' runs."
        )
    out = tmp_path_factory.mktemp("multi_device") / "results.npz"
    env = dict(os.environ)
    env["KERAS_BACKEND"] = WORKER_BACKEND
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
    ).strip()
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    done = subprocess.run(
        [sys.executable, str(WORKER), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(np.load(out))


@pytest.mark.parametrize("solver", ["scipy", "auction"])
def test_global_scope_on_4_devices_is_the_one_device_assignment(worker, solver):
    data, candidates = worker["data"], worker["candidates"]
    one = worker[f"global_{solver}_1_noise"]
    four = worker[f"global_{solver}_4_noise"]
    # The independent reference: scipy on the whole global batch.
    expected = _scipy_assigned(data, candidates)
    np.testing.assert_allclose(one, expected, atol=1e-6)
    np.testing.assert_allclose(four, expected, atol=1e-6)


@pytest.mark.parametrize("solver", ["scipy", "auction"])
def test_replica_scope_assigns_each_shard_on_its_own(worker, solver):
    data, candidates = worker["data"], worker["candidates"]
    noise = worker[f"replica_{solver}_noise"]
    rows = len(data) // DEVICES
    for shard in range(DEVICES):
        part = slice(shard * rows, (shard + 1) * rows)
        # scipy's optimum on this shard alone...
        expected = _scipy_assigned(data[part], candidates[part])
        np.testing.assert_allclose(noise[part], expected, atol=1e-6)
        # ...so every noise stays in its shard: no cross-shard pairing.
        flat = candidates[part].reshape(rows, -1)
        for row in noise[part].reshape(rows, -1):
            assert np.any(np.all(flat == row, axis=1))
    # And the shards' optimum is not the global one on this batch.
    assert not np.allclose(noise, _scipy_assigned(data, candidates))


def test_global_scope_loss_history_1_vs_4_devices(worker):
    one, four = worker["loss_global_1"], worker["loss_global_4"]
    assert len(one) == len(four) == 3 and np.all(np.isfinite(one))
    print(f"max loss difference, 1 vs 4 devices: {np.max(np.abs(one - four)):.3g}")
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-6)
    replica = worker["loss_replica_fit"]
    assert np.all(np.isfinite(replica)) and replica[-1] < replica[0] * 1.5


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="tf.distribute replicas: TF run only"
)
def test_tensorflow_replicas_draw_apart(worker):
    # Keras' SeedGenerator has the same state on every replica; the model's
    # ReplicaSeedGenerator offsets it per replica (replica 0 keeps Keras'
    # draw), so the replicas' timesteps are not copies of each other.
    draws, plain = worker["replica_draws"], worker["plain_draw"]
    assert draws.shape == (DEVICES, 3)
    np.testing.assert_array_equal(draws[0], plain)
    for i in range(DEVICES):
        for j in range(i):
            assert not np.allclose(draws[i], draws[j])


@pytest.mark.parametrize("name", ["auction", "knn"])
def test_step_compiles_with_xla_and_calls_no_host(worker, name):
    # The worker compiled the step with XLA (jax.jit(...).lower().compile();
    # TF: experimental_get_compiler_ir(stage="hlo")) and found no callback
    # in the jaxpr / compiled HLO, or no PyFunc op in the TF graph.
    assert bool(worker[f"xla_{name}_jit"])
    assert json.loads(str(worker[f"xla_{name}_host_ops"])) == []
    assert np.all(np.isfinite(worker["xla_auction_loss"]))
    if BACKEND == "tensorflow":
        assert json.loads(str(worker[f"mirrored_{name}_host_ops"])) == []
        assert np.all(np.isfinite(worker["mirrored_auction_loss"]))


def test_host_solver_step_does_call_the_host(worker):
    # The control of the test above: the same inspection finds scipy's
    # callback (on TF the step then compiles without XLA).
    found = json.loads(str(worker["xla_scipy_host_ops"]))
    assert found, found
    if BACKEND == "tensorflow":
        assert not bool(worker["xla_scipy_jit"])
        assert json.loads(str(worker["mirrored_scipy_host_ops"]))


def test_mixed_precision_under_distribution(worker):
    policies = ["mixed_bfloat16"] + (
        ["mixed_float16"] if BACKEND == "tensorflow" else []
    )
    for policy in policies:
        assert json.loads(str(worker[f"mixed_{policy}_cost_dtypes"])) == ["float32"]
        loss = worker[f"mixed_{policy}_loss"]
        assert np.all(np.isfinite(loss))
        # Same steps in float32 (histories start from the same weights).
        np.testing.assert_allclose(loss[0], worker["loss_global_4"][0], rtol=0.05)
    if BACKEND == "tensorflow":
        assert str(worker["mixed_mixed_float16_optimizer"]) == ("LossScaleOptimizer")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.data is TF's pipeline")
def test_with_assigned_noise_feeds_a_mirrored_strategy(worker):
    images = worker["pipeline_images"] * 2.0 - 1.0
    noise = worker["pipeline_noise"]
    # The pipeline assigned the global batch: noise is scipy's optimum
    # among its own rows (a permutation of them, at the optimal cost).
    rows = len(noise)
    cost = _squared_distance(images, noise)
    optimum = cost[scipy_lsa(cost)].sum()
    assert np.isclose(np.trace(cost), optimum, rtol=1e-6)
    assert np.all(np.isfinite(worker["pipeline_loss"]))
    assert rows == 16 and np.all(worker["pipeline_gain"] > 0)
