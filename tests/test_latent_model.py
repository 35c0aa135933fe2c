"""Latent diffusion: models that train on an autoencoder's latents."""

import os

import keras
import numpy as np
import pytest

import keras_immiscible as ki

IMAGES = (8, 8, 1)
LATENTS = (4, 4, 2)


def tiny_autoencoder(seed=0):
    keras.utils.set_random_seed(seed)
    encoder = keras.Sequential(
        [
            keras.Input(IMAGES),
            keras.layers.Conv2D(LATENTS[-1], 3, strides=2, padding="same"),
        ]
    )
    decoder = keras.Sequential(
        [
            keras.Input(LATENTS),
            keras.layers.Conv2DTranspose(
                1, 3, strides=2, padding="same", activation="sigmoid"
            ),
        ]
    )
    return ki.latent.Autoencoder(encoder, decoder, scaling_factor=2.0)


def latent_unet():
    return ki.layers.UNet(
        image_shape=LATENTS, widths=(8, 16), block_depth=1, embedding_dims=8
    )


def half_network():
    noisy = keras.Input(LATENTS)
    level = keras.Input((1, 1, 1))
    out = keras.layers.Add()(
        [keras.layers.Rescaling(0.5)(noisy), keras.layers.Rescaling(0.0)(level)]
    )
    return keras.Model([noisy, level], out)


class FixedTime(ki.schedules.CosineSchedule):
    def sample_times(self, batch_size, seed=None):
        return keras.ops.full((batch_size,), 0.3, "float32")


class Recording(ki.assignment.LinearAssignment):
    def assign(self, data, candidates, labels=None):
        noise = super().assign(data, candidates, labels=labels)
        self.seen = [keras.ops.convert_to_numpy(a) for a in (data, noise)]
        return noise


@pytest.fixture(scope="module")
def digits():
    return ki.data.load_digits()


def test_the_noise_is_assigned_to_the_latents(digits):
    images = digits[:16]
    autoencoder = tiny_autoencoder()
    assigner = Recording()
    model = ki.ImmiscibleDiffusion(
        half_network(),
        schedule=FixedTime(),
        assignment=assigner,
        autoencoder=autoencoder,
        seed=0,
    )
    loss = float(keras.ops.convert_to_numpy(model.compute_loss(x=images)))
    data, noise = assigner.seen
    # The data the model diffuses (and assigns noise to) is the scaled
    # latent of each image, computed here independently of the model.
    encoder = autoencoder.encoder
    latents = 2.0 * keras.ops.convert_to_numpy(encoder(images))
    np.testing.assert_allclose(data, latents, atol=1e-5)
    assert noise.shape == (16,) + LATENTS
    a, s = (keras.ops.convert_to_numpy(r) for r in FixedTime()(0.3))
    expected = np.mean((0.5 * (a * latents + s * noise) - noise) ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # Latents encoded upstream train the same way (no second encoding).
    model_on_latents = ki.ImmiscibleDiffusion(
        half_network(),
        schedule=FixedTime(),
        assignment=Recording(),
        autoencoder=autoencoder,
        seed=0,
    )
    again = float(keras.ops.convert_to_numpy(model_on_latents.compute_loss(x=latents)))
    np.testing.assert_allclose(again, loss, rtol=1e-5)


def test_latent_fit_generate_and_round_trip(digits, tmp_path):
    autoencoder = tiny_autoencoder(seed=1)
    keras.utils.set_random_seed(1)
    model = ki.ImmiscibleFlowMatching(
        latent_unet(), assignment="linear", autoencoder=autoencoder, seed=1
    )
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    before = [keras.ops.convert_to_numpy(w) for w in autoencoder.weights]
    history = model.fit(digits[:256], batch_size=64, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.9 * losses[0], losses
    assert history.history["assignment_gain"][-1] > 0.01
    # The autoencoder is frozen: diffusion training does not move it.
    for w, b in zip(autoencoder.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), b)
    # Latents encoded once (encode_dataset) train the same model.
    latents = ki.latent.encode_dataset(autoencoder, digits[:64], verbose=0)
    assert latents.shape == (64,) + LATENTS
    model.fit(latents, batch_size=32, epochs=1, verbose=0)
    samples = model.generate(4, steps=3, seed=0)
    assert samples.shape == (4,) + IMAGES and samples.dtype == np.float32
    assert 0.0 <= samples.min() and samples.max() <= 1.0
    # generate decodes the sampled latents: the same as decoding by hand.
    path = os.path.join(tmp_path, "latent.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.autoencoder, ki.latent.Autoencoder)
    np.testing.assert_allclose(loaded.generate(4, steps=3, seed=0), samples, atol=1e-6)


def test_latent_model_errors(digits):
    with pytest.raises(ValueError, match="latent shape"):
        ki.ImmiscibleDiffusion(
            ki.layers.UNet(image_shape=IMAGES, widths=(8, 16), block_depth=1),
            autoencoder=tiny_autoencoder(),
        )
    with pytest.raises(TypeError, match="autoencoder"):
        ki.ImmiscibleDiffusion(latent_unet(), autoencoder="sd")
    model = ki.ImmiscibleDiffusion(
        latent_unet(), autoencoder=tiny_autoencoder(), assignment=None
    )
    model.compile(optimizer="adamw")
    with pytest.raises(ValueError, match="latents"):
        model.fit(np.zeros((4, 6, 6, 1), "float32"), verbose=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.fit(digits[:8] * 255.0, verbose=0)
