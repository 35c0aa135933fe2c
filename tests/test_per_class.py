"""Per-class linear assignment: noise stays within its class."""

import keras
import numpy as np
import pytest
import scipy.optimize

import keras_immiscible as ki


def problem(seed, batch=24, dim=16, classes=3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, batch).astype("int32")
    # Class-dependent data, so that a global solve would pair across classes.
    centres = rng.normal(size=(classes, dim)) * 1.5
    data = centres[labels] + 0.3 * rng.normal(size=(batch, dim))
    candidates = rng.normal(size=(batch, dim))
    return data.astype("float32"), candidates.astype("float32"), labels


def which_candidate(noise, candidates):
    """The row of `candidates` each row of `noise` is (exactly)."""
    match = np.all(noise[:, None, :] == candidates[None, :, :], axis=2)
    assert np.all(match.sum(axis=1) == 1)
    return match.argmax(axis=1)


@pytest.mark.parametrize("solver", ["scipy", "auction"])
@pytest.mark.parametrize("seed", [0, 1])
def test_each_class_is_assigned_optimally_within_itself(solver, seed):
    data, candidates, labels = problem(seed)
    assigner = ki.assignment.LinearAssignment(solver=solver, per_class=True)
    noise = keras.ops.convert_to_numpy(assigner.assign(data, candidates, labels=labels))
    chosen = which_candidate(noise, candidates)
    # A permutation of the batch's noise, and candidate j (drawn for sample
    # j) only ever goes to a sample of sample j's class.
    assert sorted(chosen) == list(range(len(labels)))
    np.testing.assert_array_equal(labels[chosen], labels)
    cost = ((data[:, None, :] - candidates[None, :, :]) ** 2).sum(axis=2)
    got_total = best_total = 0.0
    for c in np.unique(labels):
        block = np.flatnonzero(labels == c)
        sub = cost[np.ix_(block, block)]
        rows, cols = scipy.optimize.linear_sum_assignment(sub)
        best, got = sub[rows, cols].sum(), cost[block, chosen[block]].sum()
        if solver == "scipy":  # exact, block by block
            assert got == pytest.approx(best, rel=1e-6), (c, got, best)
        got_total, best_total = got_total + got, best_total + best
    # The auction's certified gap: 1e-3 of what assignment can gain over
    # the identity pairing (which is within classes).
    identity = np.trace(cost)
    assert got_total - best_total <= 1e-3 * (identity - best_total) + 1e-6
    # The global solve does pair across classes on this data: per-class
    # assignment changes something.
    glob = keras.ops.convert_to_numpy(
        ki.assignment.LinearAssignment(solver=solver).assign(data, candidates)
    )
    assert np.any(labels[which_candidate(glob, candidates)] != labels)


def test_one_class_equals_the_global_solve():
    data, candidates, _ = problem(2)
    labels = np.full(len(data), 4, "int32")
    per_class = ki.assignment.LinearAssignment(per_class=True)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(per_class.assign(data, candidates, labels=labels)),
        keras.ops.convert_to_numpy(
            ki.assignment.LinearAssignment().assign(data, candidates)
        ),
    )


def test_call_with_labels_and_errors():
    data, _, labels = problem(3)
    assigner = ki.assignment.LinearAssignment(per_class=True)
    noise, gain = assigner(data, seed=1, labels=labels, return_gain=True)
    gain = float(keras.ops.convert_to_numpy(gain))
    assert gain > 0.0
    # The gain against the assigner's own draw, in float64 numpy.
    draw = keras.ops.convert_to_numpy(assigner.draw(data, seed=1)).astype("float64")
    noise = keras.ops.convert_to_numpy(noise).astype("float64")
    before = np.linalg.norm(data - draw, axis=1).mean()
    after = np.linalg.norm(data - noise, axis=1).mean()
    assert gain == pytest.approx(1.0 - after / before, rel=1e-4)
    with pytest.raises(ValueError, match="labels"):
        assigner(data, seed=1)
    with pytest.raises(TypeError, match="per_class"):
        ki.assignment.LinearAssignment(per_class="yes")
    config = assigner.get_config()
    assert config["per_class"] is True
    again = ki.assignment.deserialize(ki.assignment.serialize(assigner))
    assert again.per_class is True
    unconditional = ki.layers.UNet(
        image_shape=(8, 8, 1), widths=(8,), block_depth=1, embedding_dims=8
    )
    with pytest.raises(ValueError, match="num_classes"):
        ki.ImmiscibleDiffusion(unconditional, assignment=assigner)


def test_a_model_assigns_within_the_classes_of_its_batch():
    images, labels = ki.data.load_digits(return_labels=True)
    images, labels = images[:32], labels[:32] % 2

    class Recording(ki.assignment.LinearAssignment):
        def assign(self, data, candidates, labels=None):
            noise = super().assign(data, candidates, labels=labels)
            self.seen = [
                keras.ops.convert_to_numpy(a) for a in (candidates, noise, labels)
            ]
            return noise

    assigner = Recording(per_class=True)
    net = ki.layers.UNet(
        image_shape=(8, 8, 1),
        widths=(8,),
        block_depth=1,
        embedding_dims=8,
        num_classes=2,
    )
    model = ki.ImmiscibleDiffusion(net, assignment=assigner, seed=0)
    model.compute_loss(x=images, y=labels)
    candidates, noise, seen_labels = assigner.seen
    np.testing.assert_array_equal(seen_labels, labels)
    chosen = which_candidate(noise.reshape(32, -1), candidates.reshape(32, -1))
    np.testing.assert_array_equal(labels[chosen], labels)
