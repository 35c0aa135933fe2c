"""Classifier-free guidance: label dropout in training, guided sampling."""

import os
import warnings

import keras
import numpy as np
import pytest

import keras_immiscible as ki

SHAPE = (8, 8, 1)
NUM_CLASSES = 3
NULL = NUM_CLASSES  # The UNet's null label: the last embedding row.


def class_unet(seed):
    """A class-conditional UNet whose labels visibly change its output.

    The zero-initialised output layer is randomised (an untrained UNet
    outputs 0 for every label, and every guidance identity would hold
    trivially), and so is the class embedding.
    """
    keras.utils.set_random_seed(seed)
    network = ki.layers.UNet(
        image_shape=SHAPE,
        widths=(8,),
        block_depth=1,
        embedding_dims=8,
        num_classes=NUM_CLASSES,
    )
    rng = np.random.default_rng(seed)
    for weight in network.weights:
        value = keras.ops.convert_to_numpy(weight)
        if ("kernel" in weight.path and not value.any()) or (
            "class_embedding" in weight.path
        ):
            weight.assign(0.5 * rng.standard_normal(value.shape))
    return network


FAMILIES = {
    "ddim": lambda net: ki.ImmiscibleDiffusion(net, assignment=None, label_dropout=0.1),
    "flow-euler": lambda net: ki.ImmiscibleFlowMatching(
        net, assignment=None, label_dropout=0.1
    ),
    "flow-heun": lambda net: ki.ImmiscibleFlowMatching(
        net, assignment=None, sampler="heun", label_dropout=0.1
    ),
    "consistency": lambda net: ki.ImmiscibleConsistency(
        net, assignment=None, total_training_steps=10, label_dropout=0.1
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_guidance_scales_one_and_zero_are_the_two_models(family):
    model = FAMILIES[family](class_unet(seed=1))
    labels = np.array([0, 1, 2, 1])
    steps = 1 if family == "consistency" else 4
    conditional = model.generate(4, steps=steps, seed=3, labels=labels)
    unconditional = model.generate(4, steps=steps, seed=3, labels=np.full(4, NULL))
    # The labels matter here, so the identities below are not 0 == 0.
    assert np.abs(conditional - unconditional).mean() > 1e-2
    np.testing.assert_array_equal(
        model.generate(4, steps=steps, seed=3, labels=labels, guidance_scale=1.0),
        conditional,
    )
    np.testing.assert_allclose(
        model.generate(4, steps=steps, seed=3, labels=labels, guidance_scale=0.0),
        unconditional,
        atol=1e-4,
    )
    strong = model.generate(4, steps=steps, seed=3, labels=labels, guidance_scale=3.0)
    assert np.abs(strong - conditional).mean() > 1e-3


def test_guided_prediction_is_the_extrapolation():
    model = FAMILIES["ddim"](class_unet(seed=2))
    rng = np.random.default_rng(4)
    noisy = rng.standard_normal((5,) + SHAPE).astype("float32")
    level = rng.uniform(0.1, 0.9, (5, 1, 1, 1)).astype("float32")
    labels = np.array([0, 1, 2, 0, 1], "int32")

    def network(inputs):
        return keras.ops.cast(model.network(inputs), "float32")

    cond = keras.ops.convert_to_numpy(network([noisy, level, labels]))
    uncond = keras.ops.convert_to_numpy(
        network([noisy, level, np.full(5, NULL, "int32")])
    )
    for scale in (0.0, 1.0, 2.5):
        guided = model._guided(network, scale, NULL)(
            [
                keras.ops.convert_to_tensor(noisy),
                keras.ops.convert_to_tensor(level),
                keras.ops.convert_to_tensor(labels),
            ]
        )
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(guided),
            uncond + scale * (cond - uncond),
            atol=1e-5,
        )


def test_label_dropout_replaces_the_fraction_of_labels():
    model = ki.ImmiscibleDiffusion(
        class_unet(seed=5), assignment=None, label_dropout=0.1, seed=0
    )
    labels = np.random.default_rng(6).integers(0, NUM_CLASSES, 20_000)
    dropped = keras.ops.convert_to_numpy(
        model._drop_labels(keras.ops.convert_to_tensor(labels, "int32"))
    )
    changed = dropped != labels
    # Binomial(20000, 0.1): std 0.0021; 5 sigma.
    assert abs(changed.mean() - 0.1) < 0.011, changed.mean()
    assert np.all(dropped[changed] == NULL)
    # A second draw drops other labels (the model's seed generator moves).
    again = keras.ops.convert_to_numpy(
        model._drop_labels(keras.ops.convert_to_tensor(labels, "int32"))
    )
    assert np.mean((again != labels) != changed) > 0.1


class FixedTime(ki.schedules.CosineSchedule):
    def sample_times(self, batch_size, seed=None):
        return keras.ops.full((batch_size,), 0.3, "float32")


def test_label_dropout_reaches_the_training_loss():
    images, labels = ki.data.load_digits(return_labels=True)
    images, labels = images[:64], labels[:64] % NUM_CLASSES
    losses = {}
    for dropout in (0.0, 0.5):
        losses[dropout] = []
        for training in (True, False):
            model = ki.ImmiscibleDiffusion(
                class_unet(seed=7),
                schedule=FixedTime(),
                assignment=None,
                label_dropout=dropout,
                seed=0,
            )
            losses[dropout].append(
                float(
                    keras.ops.convert_to_numpy(
                        model.compute_loss(x=images, y=labels, training=training)
                    )
                )
            )
    # Same seed, same noise, fixed times: only the dropped labels differ,
    # and only in training (evaluation uses the labels as they are).
    assert losses[0.0][0] != losses[0.5][0]
    assert losses[0.0][1] == pytest.approx(losses[0.5][1], rel=1e-6)


def test_guidance_errors_and_warning(tmp_path):
    unconditional = ki.layers.UNet(
        image_shape=SHAPE, widths=(8,), block_depth=1, embedding_dims=8
    )
    with pytest.raises(ValueError, match="class-conditional"):
        ki.ImmiscibleDiffusion(unconditional, label_dropout=0.1)
    with pytest.raises(ValueError, match="label_dropout"):
        ki.ImmiscibleDiffusion(class_unet(seed=8), label_dropout=1.0)
    model = ki.ImmiscibleDiffusion(class_unet(seed=8), assignment=None)
    with pytest.raises(ValueError, match="labels"):
        model.generate(2, steps=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        model.generate(2, steps=2, labels=[0, 1], guidance_scale="high")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.generate(2, steps=2, labels=[0, 1], guidance_scale=2.0)
        model.generate(2, steps=2, labels=[0, 1], guidance_scale=2.0)
    found = [w for w in record if "label_dropout=0" in str(w.message)]
    assert len(found) == 1 and found[0].filename == __file__
    # label_dropout travels with the model.
    trained = FAMILIES["flow-euler"](class_unet(seed=9))
    trained.compile(optimizer="adamw")
    path = os.path.join(tmp_path, "guided.keras")
    trained.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.label_dropout == 0.1
    np.testing.assert_allclose(
        loaded.generate(2, steps=3, seed=0, labels=[1, 2], guidance_scale=2.0),
        trained.generate(2, steps=3, seed=0, labels=[1, 2], guidance_scale=2.0),
        atol=1e-6,
    )
