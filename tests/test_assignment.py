"""Tests of the noise assigners (`keras_immiscible.assignment`).

The assigned noise is recovered as a permutation of the assigner's own draw
(`assigner.draw(data, seed=s)` with the same int seed gives the same draw),
and that permutation is judged against scipy's optimum of the documented
cost, computed independently in float64 numpy.
"""

import json

import keras
import numpy as np
import pytest
import scipy.optimize

from keras_immiscible import assignment
from keras_immiscible.assignment import KNNSelection
from keras_immiscible.assignment import LinearAssignment
from keras_immiscible.assignment import NoiseAssigner
from keras_immiscible.assignment import RandomNoise

BACKEND = keras.backend.backend()

# One batch shape for most tests: on JAX every new noise shape costs a
# compilation of the random generator (~0.5-1 s on a small CPU).
B = 128

jax_only = pytest.mark.skipif(BACKEND != "jax", reason="jax.jit test")
tf_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function test")


# ---------------------------------------------------------------------------
# Helpers (independent numpy references).
# ---------------------------------------------------------------------------


def to_np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def np_cost(x, y, metric):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    sq = np.stack([((row - y) ** 2).sum(-1) for row in x])
    return sq if metric == "sq_l2" else np.sqrt(sq)


def recover_permutation(noise, draw):
    """The `perm` with noise[i] == draw[perm[i]] exactly; asserts it exists."""
    a = np.asarray(noise).reshape(len(noise), -1)
    b = np.asarray(draw).reshape(len(draw), -1)
    assert a.shape == b.shape
    equal = (a[:, None, :] == b[None, :, :]).all(-1)
    assert np.all(equal.sum(axis=1) == 1), "a row is not exactly one drawn row"
    perm = equal.argmax(axis=1)
    np.testing.assert_array_equal(np.sort(perm), np.arange(len(perm)))
    return perm


def missed_fraction(cost, perm):
    """(total - optimum) / (identity - optimum) on the float64 `cost`."""
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    opt = cost[rows, cols].sum()
    gain = np.trace(cost) - opt
    assert gain > 0
    return (cost[np.arange(len(perm)), perm].sum() - opt) / gain


def np_gain(data, assigned, unassigned):
    """1 - mean ||x - assigned|| / mean ||x - unassigned||, in float64."""

    def mean_dist(noise):
        diff = np.asarray(noise, np.float64) - np.asarray(data, np.float64)
        return np.sqrt((diff.reshape(len(diff), -1) ** 2).sum(-1)).mean()

    return 1.0 - mean_dist(assigned) / mean_dist(unassigned)


def test_assignment_gain_is_the_relative_distance_reduction():
    # Data at 0, assigned noise at distance 3 (rows 0, 1) and 1 (row 2),
    # unassigned at distance 4 and 2: mean 7/3 against 10/3, a gain of 0.3.
    data = np.zeros((3, 2), "float32")
    assigned = np.array([[3, 0], [0, 3], [1, 0]], "float32")
    unassigned = np.array([[4, 0], [0, 4], [0, 2]], "float32")
    gain = float(to_np(assignment.assignment_gain(data, assigned, unassigned)))
    assert gain == pytest.approx(0.3, rel=1e-6)
    assert gain == pytest.approx(np_gain(data, assigned, unassigned), rel=1e-6)
    # Farther noise is a negative gain; the same noise is none.
    worse = float(to_np(assignment.assignment_gain(data, unassigned, assigned)))
    assert worse == pytest.approx(1.0 - 10.0 / 7.0, rel=1e-6)
    assert float(to_np(assignment.assignment_gain(data, assigned, assigned))) == 0.0


# ---------------------------------------------------------------------------
# LinearAssignment
# ---------------------------------------------------------------------------

# Allowed missed fraction of the achievable reduction, on the exact metric.
TOLERANCE = {
    ("scipy", False): 1e-5,  # exact solver; float32 cost rounding only
    ("auction", False): 1e-3,
    ("scipy", True): 1e-2,  # float16 cost
    ("auction", True): 1e-2,
}


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("metric", ["sq_l2", "l2"])
@pytest.mark.parametrize("solver", ["scipy", "auction"])
def test_linear_assignment_is_optimal_permutation_of_the_draw(
    digits, solver, metric, quantize
):
    images = digits[:B]
    assigner = LinearAssignment(solver=solver, metric=metric, quantize=quantize)
    noise = assigner(images, seed=3)
    draw = to_np(assigner.draw(images, seed=3))
    noise = to_np(noise)
    assert noise.shape == images.shape and noise.dtype == np.float32
    assert draw.shape == images.shape
    perm = recover_permutation(noise, draw)
    # Assignment moved noise around: not the identity.
    assert np.mean(perm == np.arange(B)) < 0.5
    cost = np_cost(images, draw, metric)
    assert missed_fraction(cost, perm) <= TOLERANCE[(solver, quantize)]


@pytest.mark.parametrize("solver", ["scipy", "auction"])
def test_linear_assignment_gain_on_digits(digits, solver):
    images = digits[200 : 200 + B]
    assigner = LinearAssignment(solver=solver)
    noise, gain = assigner(images, seed=9, return_gain=True)
    draw = to_np(assigner.draw(images, seed=9))
    expected = np_gain(images, to_np(noise), draw)
    assert expected > 0.0
    assert float(to_np(gain)) == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("metric", ["sq_l2", "l2"])
def test_linear_assignment_gain_at_paper_scale(metric):
    # Immiscible Diffusion (Table 2): a change of about -1.9% at B=128 for
    # 3072 dims, i.e. a gain of about 1.9%.
    images = np.random.default_rng(0).uniform(-1, 1, size=(128, 32, 32, 3))
    images = images.astype("float32")
    noise, gain = LinearAssignment(metric=metric)(images, seed=1, return_gain=True)
    gain = float(to_np(gain))
    assert 0.005 < gain < 0.04, gain
    draw = to_np(LinearAssignment().draw(images, seed=1))
    assert gain == pytest.approx(np_gain(images, to_np(noise), draw), rel=1e-3)


@pytest.mark.parametrize("metric", ["sq_l2", "l2"])
def test_linear_assignment_float16_data_of_large_images(metric):
    # Mixed-precision batches of 128x128x3 images: a row's sum of 49,152
    # squared values (~65,000 for noise alone) overflows float16 (max
    # 65,504) unless the cost and the gain are computed in float32.
    images = np.random.default_rng(5).uniform(-1, 1, size=(8, 128, 128, 3))
    images = images.astype("float16")
    assigner = LinearAssignment(metric=metric)
    noise, gain = assigner(images, seed=2, return_gain=True)
    noise = to_np(noise)
    assert noise.dtype == np.float16
    draw = to_np(assigner.draw(images, seed=2))
    perm = recover_permutation(noise, draw)
    assert missed_fraction(np_cost(images, draw, metric), perm) <= 1e-2
    gain = float(to_np(gain))
    assert np.isfinite(gain)
    assert gain == pytest.approx(np_gain(images, noise, draw), abs=1e-3)


def test_linear_assignment_batch_of_one_is_the_draw():
    images = np.full((1, 8, 8, 1), 0.5, "float32")
    for solver in ("scipy", "auction"):
        assigner = LinearAssignment(solver=solver)
        noise, gain = assigner(images, seed=2, return_gain=True)
        np.testing.assert_array_equal(
            to_np(noise), to_np(assigner.draw(images, seed=2))
        )
        assert float(to_np(gain)) == 0.0


# ---------------------------------------------------------------------------
# KNNSelection
# ---------------------------------------------------------------------------


def np_knn(images, candidates):
    diff = candidates.astype(np.float64) - images[:, None].astype(np.float64)
    nearest = (diff.reshape(diff.shape[0], diff.shape[1], -1) ** 2).sum(-1).argmin(1)
    return candidates[np.arange(len(images)), nearest]


def test_knn_selection_gain_grows_with_k(digits):
    images = digits[:B]
    gains = []
    # (k=8 behaves alike; each k is a new noise shape, slow to compile on JAX.)
    for k in (1, 2, 4):
        assigner = KNNSelection(k=k)
        noise, gain = assigner(images, seed=21, return_gain=True)
        candidates = to_np(assigner.draw(images, seed=21))
        assert candidates.shape == (B, k, 8, 8, 1)
        noise = to_np(noise)
        assert noise.shape == images.shape
        np.testing.assert_array_equal(noise, np_knn(images, candidates))
        gain = float(to_np(gain))
        expected = np_gain(images, noise, candidates[:, 0])
        assert gain == pytest.approx(expected, rel=1e-4, abs=1e-7)
        gains.append(gain)
    assert gains[0] == 0.0
    assert gains[0] < gains[1] < gains[2], gains


def test_knn_selection_batch_of_one(digits):
    image = digits[5:6]
    assigner = KNNSelection(k=4)
    noise = to_np(assigner(image, seed=7))
    candidates = to_np(assigner.draw(image, seed=7))
    assert noise.shape == (1, 8, 8, 1) and candidates.shape == (1, 4, 8, 8, 1)
    # It is one of its own candidates...
    hits = [np.array_equal(noise[0], c) for c in candidates[0]]
    assert sum(hits) == 1
    # ... the nearest one.
    np.testing.assert_array_equal(noise, np_knn(image, candidates))


# ---------------------------------------------------------------------------
# RandomNoise
# ---------------------------------------------------------------------------


def test_random_noise_is_keras_normal(digits):
    images = digits[:B]
    noise, gain = RandomNoise()(images, seed=5, return_gain=True)
    np.testing.assert_array_equal(
        to_np(noise), to_np(keras.random.normal(images.shape, seed=5))
    )
    assert float(to_np(gain)) == 0.0
    noise = to_np(noise)
    # And it is standard normal noise.
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05


# ---------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------

# The solver does not draw: the auction's determinism given a cost is
# covered in test_ops (and it is slow on the eager torch backend).
ASSIGNERS = [
    RandomNoise(),
    KNNSelection(k=4),
    LinearAssignment(),
    LinearAssignment(metric="l2", quantize=True),
]


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=repr)
def test_same_seed_same_noise(digits, assigner):
    images = digits[:B]
    first = to_np(assigner(images, seed=3))
    np.testing.assert_array_equal(first, to_np(assigner(images, seed=3)))
    assert not np.array_equal(first, to_np(assigner(images, seed=4)))

    def sequence(generator):
        return [to_np(assigner(images, seed=generator)) for _ in range(3)]

    a = sequence(keras.random.SeedGenerator(5))
    b = sequence(keras.random.SeedGenerator(5))
    c = sequence(keras.random.SeedGenerator(6))
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z)
    # A generator advances: consecutive draws differ.
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a[1], a[2])


# ---------------------------------------------------------------------------
# Inside compiled functions
# ---------------------------------------------------------------------------


def auction_gap(images, noise, draw):
    """(total - optimum) / (identity - optimum) of pairing `images` with
    `noise` (a permutation of `draw`'s rows), squared L2, against scipy."""
    x = np.asarray(images, np.float64).reshape(len(images), -1)
    d = np.asarray(draw, np.float64).reshape(len(draw), -1)
    n = np.asarray(noise, np.float64).reshape(len(noise), -1)
    cost = ((x[:, None, :] - d[None, :, :]) ** 2).sum(-1)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    optimum, identity = cost[rows, cols].sum(), np.trace(cost)
    total = ((x - n) ** 2).sum()
    return (total - optimum) / (identity - optimum)


def check_compiled_step(compile_fn, assigner, images, same_draw_as_eager):
    """Runs the assigner (and its draw) compiled; checks against eager."""

    def step(x):
        noise, gain = assigner(x, seed=8, return_gain=True)
        return noise, gain, assigner.draw(x, seed=8)

    noise, gain, draw = (to_np(t) for t in compile_fn(step)(images))
    if same_draw_as_eager:
        np.testing.assert_array_equal(draw, to_np(assigner.draw(images, seed=8)))
    if getattr(assigner, "solver", None) == "auction":
        # The auction stops within its tolerance of the optimum, and two
        # compilations may round differently near ties: judged by its gap.
        assert auction_gap(images, noise, draw) <= 1e-3 + 1e-6
    else:
        # Given the same draw, the compiled assignment is the eager one.
        np.testing.assert_array_equal(noise, to_np(assigner.assign(images, draw)))
    unassigned = to_np(assigner.unassigned(draw))
    assert float(gain) == pytest.approx(
        np_gain(images, noise, unassigned), rel=1e-4, abs=1e-7
    )
    if not isinstance(assigner, RandomNoise):
        assert float(gain) > 0.0


@jax_only
@pytest.mark.parametrize(
    "assigner",
    [
        RandomNoise(),
        KNNSelection(k=4),
        LinearAssignment(),
        LinearAssignment(solver="auction"),
    ],
    ids=repr,
)
def test_assigners_inside_jax_jit(digits, assigner):
    import jax

    check_compiled_step(jax.jit, assigner, digits[:B], same_draw_as_eager=True)


@tf_only
@pytest.mark.parametrize(
    "assigner, jit_compile",
    [
        (RandomNoise(), True),
        (KNNSelection(k=4), True),
        (LinearAssignment(), False),
        (LinearAssignment(solver="auction"), True),
    ],
    ids=repr,
)
def test_assigners_inside_tf_function(digits, assigner, jit_compile):
    # TensorFlow's stateless RNG picks another algorithm under XLA, so an
    # int seed draws different noise there than eagerly (TensorFlow's
    # behaviour, not the library's); without XLA the draw is the same.
    import tensorflow as tf

    check_compiled_step(
        lambda fn: tf.function(fn, jit_compile=jit_compile),
        assigner,
        digits[:B],
        same_draw_as_eager=not jit_compile,
    )


@tf_only
@pytest.mark.parametrize(
    "assigner",
    [
        RandomNoise(),
        KNNSelection(k=4),
        LinearAssignment(),
        LinearAssignment(solver="auction"),
    ],
    ids=repr,
)
def test_assigners_with_unknown_batch_size(digits, assigner):
    # `model.fit` on TensorFlow traces the train step with an unknown batch
    # dimension (unless the dataset drops its remainder). Every assigner,
    # gain included, must work there and draw what it draws eagerly.
    import tensorflow as tf

    images = digits[:B]
    step = tf.function(
        lambda x: assigner(x, seed=8, return_gain=True),
        input_signature=[tf.TensorSpec((None, 8, 8, 1), "float32")],
    )
    noise, gain = step(images)
    eager_noise, eager_gain = assigner(images, seed=8, return_gain=True)
    assert tuple(noise.shape) == images.shape
    np.testing.assert_array_equal(to_np(noise), to_np(eager_noise))
    np.testing.assert_allclose(to_np(gain), to_np(eager_gain), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# get / serialization
# ---------------------------------------------------------------------------


def test_get_resolves_identifiers():
    assert type(assignment.get(None)) is RandomNoise
    assert type(assignment.get("random")) is RandomNoise
    assert type(assignment.get("vanilla")) is RandomNoise
    linear = assignment.get("linear")
    assert type(linear) is LinearAssignment
    assert linear.get_config() == {
        "solver": "scipy",
        "metric": "sq_l2",
        "quantize": False,
        "per_class": False,
        "scope": "global",
    }
    assert type(assignment.get("Linear")) is LinearAssignment
    knn = assignment.get("knn")
    assert type(knn) is KNNSelection and knn.k == 8
    instance = KNNSelection(k=3)
    assert assignment.get(instance) is instance
    original = LinearAssignment(solver="auction", metric="l2", quantize=True)
    rebuilt = assignment.get(assignment.serialize(original))
    assert type(rebuilt) is LinearAssignment and rebuilt is not original
    assert rebuilt.get_config() == original.get_config()
    rebuilt = assignment.get(json.loads(json.dumps(assignment.serialize(instance))))
    assert type(rebuilt) is KNNSelection and rebuilt.k == 3


def test_get_rejects_bad_identifiers():
    for name in ("hungarian", "", "linear_assignment"):
        with pytest.raises(ValueError, match="Unknown assignment"):
            assignment.get(name)
    for bad in (42, 1.5, ["linear"], LinearAssignment):
        with pytest.raises(TypeError, match="assignment"):
            assignment.get(bad)
    dense = keras.saving.serialize_keras_object(keras.layers.Dense(2))
    with pytest.raises(ValueError, match="NoiseAssigner"):
        assignment.get(dense)


@pytest.mark.parametrize(
    "assigner",
    [
        RandomNoise(),
        KNNSelection(k=5),
        LinearAssignment(solver="auction", metric="l2", quantize=True),
        LinearAssignment(),
    ],
    ids=repr,
)
def test_config_and_serialization_round_trip(assigner):
    config = assigner.get_config()
    rebuilt = type(assigner).from_config(config)
    assert type(rebuilt) is type(assigner)
    assert rebuilt.get_config() == config
    assert repr(rebuilt) == repr(assigner)

    serialized = keras.saving.serialize_keras_object(assigner)
    serialized = json.loads(json.dumps(serialized))  # JSON-able
    rebuilt = keras.saving.deserialize_keras_object(serialized)
    assert type(rebuilt) is type(assigner)
    assert isinstance(rebuilt, NoiseAssigner)
    assert rebuilt.get_config() == config
    rebuilt = assignment.deserialize(assignment.serialize(assigner))
    assert type(rebuilt) is type(assigner) and rebuilt.get_config() == config


def test_serialized_assigner_behaves_the_same(digits):
    images = digits[:B]
    original = KNNSelection(k=4)
    rebuilt = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(original)
    )
    np.testing.assert_array_equal(
        to_np(original(images, seed=4)), to_np(rebuilt(images, seed=4))
    )


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "assigner",
    [
        RandomNoise(),
        KNNSelection(k=3),
        LinearAssignment(),
        LinearAssignment(solver="auction"),
    ],
    ids=repr,
)
def test_assigners_reject_bad_data(assigner):
    data = np.zeros((4, 3, 3, 1), "float32")
    for value in (np.nan, np.inf):
        bad = data.copy()
        bad[2, 1, 0, 0] = value
        with pytest.raises(ValueError, match="`data`"):
            assigner(bad, seed=1)
    with pytest.raises(TypeError, match="`data`"):
        assigner(data.astype("int32"), seed=1)
    with pytest.raises(TypeError, match="`data`"):
        assigner(None, seed=1)
    with pytest.raises(ValueError, match="`data`"):
        assigner(np.zeros((4,), "float32"), seed=1)


def test_linear_assignment_rejects_bad_options():
    with pytest.raises(ValueError, match="solver"):
        LinearAssignment(solver="hungarian")
    with pytest.raises(ValueError, match="metric"):
        LinearAssignment(metric="l1")
    for quantize in (1, "yes", None):
        with pytest.raises(TypeError, match="quantize"):
            LinearAssignment(quantize=quantize)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, False, "4", None])
def test_knn_selection_rejects_bad_k(k):
    with pytest.raises(ValueError, match="`k`"):
        KNNSelection(k=k)
