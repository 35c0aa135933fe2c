"""`keras_immiscible.optimizers`: the EMA warm-up against a hand computation."""

import keras
import numpy as np
import pytest

import keras_immiscible as ki


def hand_ema(weights, momentum, warmup):
    """The average after each step: a copy at step 0, then
    a <- m_t a + (1 - m_t) w_t with m_t = min(momentum, (1 + t) / (warmup + t))."""
    average = None
    for t, w in enumerate(weights):
        if average is None:
            average = np.array(w, dtype="float64")
            continue
        m = momentum if warmup is None else min(momentum, (1 + t) / (warmup + t))
        average = m * average + (1 - m) * w
    return average


def run_steps(optimizer, steps=40, seed=0):
    rng = np.random.default_rng(seed)
    variable = keras.Variable(rng.normal(size=(3, 2)).astype("float32"))
    weights = []
    for _ in range(steps):
        grad = keras.ops.convert_to_tensor(rng.normal(size=(3, 2)).astype("float32"))
        optimizer.apply([grad], [variable])
        weights.append(keras.ops.convert_to_numpy(variable).astype("float64"))
    average = keras.ops.convert_to_numpy(optimizer._model_variables_moving_average[0])
    return weights, average


def test_warmup_momentum_closed_form():
    for t in (0, 1, 8, 80, 10_000):
        expected = min(0.999, (1 + t) / (10 + t))
        got = float(ki.optimizers.warmup_momentum(0.999, t, 10.0))
        assert got == pytest.approx(expected, rel=1e-6)
    assert float(ki.optimizers.warmup_momentum(0.9, 5, None)) == pytest.approx(0.9)


@pytest.mark.parametrize("warmup", [10.0, 3.0])
def test_average_matches_hand_computation(warmup):
    optimizer = ki.optimizers.AdamW(
        0.1, weight_decay=0.0, use_ema=True, ema_momentum=0.95, ema_warmup=warmup
    )
    weights, average = run_steps(optimizer)
    np.testing.assert_allclose(average, hand_ema(weights, 0.95, warmup), atol=1e-5)
    # The warm-up is visible: Keras' constant momentum gives another average.
    assert np.max(np.abs(average - hand_ema(weights, 0.95, None))) > 1e-2


def test_no_warmup_is_keras_adamw():
    ours = ki.optimizers.AdamW(0.1, use_ema=True, ema_momentum=0.9, ema_warmup=None)
    theirs = keras.optimizers.AdamW(0.1, use_ema=True, ema_momentum=0.9)
    w1, a1 = run_steps(ours)
    w2, a2 = run_steps(theirs)
    np.testing.assert_allclose(np.stack(w1), np.stack(w2), atol=1e-6)
    np.testing.assert_allclose(a1, a2, atol=1e-6)
    np.testing.assert_allclose(a1, hand_ema(w1, 0.9, None), atol=1e-5)


def test_mixin_on_another_optimizer():
    class SGD(ki.optimizers.EMAWarmup, keras.optimizers.SGD):
        pass

    optimizer = SGD(0.05, use_ema=True, ema_momentum=0.99, ema_warmup=5)
    weights, average = run_steps(optimizer)
    np.testing.assert_allclose(average, hand_ema(weights, 0.99, 5.0), atol=1e-5)


@pytest.mark.parametrize("bad", [0.5, 0, -3])
def test_bad_warmup_values(bad):
    with pytest.raises(ValueError, match="ema_warmup"):
        ki.optimizers.AdamW(use_ema=True, ema_warmup=bad)


def test_bad_warmup_type():
    with pytest.raises(TypeError, match="ema_warmup"):
        ki.optimizers.AdamW(use_ema=True, ema_warmup="10")


def test_config_round_trip_and_fit(tmp_path):
    optimizer = ki.optimizers.AdamW(1e-3, use_ema=True, ema_momentum=0.99, ema_warmup=7)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(clone) is ki.optimizers.AdamW and clone.ema_warmup == 7.0
    images = ki.data.load_digits()[:64]
    net = ki.layers.UNet(image_shape=(8, 8, 1), widths=(8,), block_depth=1)
    model = ki.ImmiscibleDiffusion(net, assignment=None, seed=0)
    model.compile(optimizer=optimizer)
    model.fit(images, batch_size=32, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, ki.optimizers.AdamW)
    assert loaded.optimizer.ema_warmup == 7.0
