"""keras_immiscible.latent: the Autoencoder interface, keras-cv's Stable
Diffusion VAE and encode_dataset.

The user-autoencoder tests need only Keras; the StableDiffusionVAE tests skip
without keras-cv and are marked slow (each build initialises ~84M weights).
"""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

import keras_immiscible as ki
from keras_immiscible.latent import Autoencoder
from keras_immiscible.latent import encode_dataset

# ------------------------------------------------------------------ helpers


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def pool2(x):
    """2x2 average pooling of NHWC numpy images."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def up2(x):
    """2x nearest-neighbour upsampling of NHWC numpy images."""
    return x.repeat(2, axis=1).repeat(2, axis=2)


def conv1x1(layer, x):
    kernel, bias = (to_numpy(w) for w in layer.weights)
    return x @ kernel[0, 0] + bias


def small_models(channels=1, latent_channels=2, size=4, seed=0):
    """An encoder (pool 2, 1x1 conv) and decoder (upsample 2, 1x1 conv) whose
    outputs are easy to compute in numpy."""
    keras.utils.set_random_seed(seed)
    init = keras.initializers.RandomNormal(stddev=0.7, seed=seed)
    encoder = keras.Sequential(
        [
            keras.Input((size, size, channels)),
            keras.layers.AveragePooling2D(2),
            keras.layers.Conv2D(
                latent_channels,
                1,
                kernel_initializer=init,
                bias_initializer=init,
                name="enc_conv",
            ),
        ],
        name="small_encoder",
    )
    decoder = keras.Sequential(
        [
            keras.Input((size // 2, size // 2, latent_channels)),
            keras.layers.UpSampling2D(2),
            keras.layers.Conv2D(
                channels,
                1,
                kernel_initializer=init,
                bias_initializer=init,
                name="dec_conv",
            ),
        ],
        name="small_decoder",
    )
    return encoder, decoder


def images(n=5, size=4, channels=1, seed=0):
    return np.random.default_rng(seed).random(
        (n, size, size, channels), dtype=np.float32
    )


class CountingEncoder:
    """A callable encoder (2x2 average pooling, doubled) that counts its
    calls on data (not the symbolic call that infers the latent shape)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        if not isinstance(x, keras.KerasTensor):
            self.calls += 1
        b, h, w, c = x.shape
        x = ops.reshape(x, (-1, h // 2, 2, w // 2, 2, c))
        return 2.0 * ops.mean(x, axis=(2, 4))


def counting_autoencoder(scaling_factor=0.5):
    encoder = CountingEncoder()
    autoencoder = Autoencoder(
        encoder,
        lambda z: ops.repeat(ops.repeat(z, 2, axis=1), 2, axis=2),
        scaling_factor=scaling_factor,
        image_shape=(4, 4, 1),
    )
    return autoencoder, encoder


# ------------------------------------------------- Autoencoder (user models)


def test_autoencoder_encode_decode_against_numpy():
    """encode = s * encoder(map(images)) and decode = unmap(decoder(z / s)),
    with [0, 1] <-> [-1, 1] mapping, computed in numpy."""
    encoder, decoder = small_models()
    ae = Autoencoder(encoder, decoder, scaling_factor=0.5, model_range=(-1, 1))
    assert ae.image_shape == (4, 4, 1)
    assert ae.latent_shape == (2, 2, 2)
    assert ae.scaling_factor == 0.5
    assert ae.image_range == (0.0, 1.0) and ae.model_range == (-1.0, 1.0)
    assert not ae.stochastic
    x = images()
    z = to_numpy(ae.encode(x))
    expected_z = 0.5 * conv1x1(encoder.get_layer("enc_conv"), pool2(2 * x - 1))
    np.testing.assert_allclose(z, expected_z, rtol=1e-5, atol=1e-5)
    assert z.dtype == np.float32 and z.shape == (5, 2, 2, 2)

    raw = conv1x1(decoder.get_layer("dec_conv"), up2(z / 0.5))
    unclipped = (raw + 1.0) / 2.0
    assert unclipped.min() < 0.0 or unclipped.max() > 1.0  # clipping matters
    np.testing.assert_allclose(
        to_numpy(ae.decode(z, clip=False)), unclipped, rtol=1e-5, atol=1e-5
    )
    decoded = to_numpy(ae.decode(z))
    np.testing.assert_allclose(decoded, np.clip(unclipped, 0, 1), rtol=1e-5, atol=1e-5)
    assert decoded.min() >= 0.0 and decoded.max() <= 1.0
    # The model call is the reconstruction without the clip.
    np.testing.assert_allclose(to_numpy(ae(x)), unclipped, rtol=1e-5, atol=1e-5)


def test_autoencoder_uint8_and_other_image_range():
    """uint8 images are read as 0-255 whatever `image_range` is; float
    images are mapped from `image_range` to `model_range`."""
    encoder, decoder = small_models()
    ae = Autoencoder(encoder, decoder, image_range=(-1, 1), model_range=(0, 255))
    x8 = (images() * 255).round().astype(np.uint8)
    expected = conv1x1(encoder.get_layer("enc_conv"), pool2(x8.astype(np.float32)))
    np.testing.assert_allclose(to_numpy(ae.encode(x8)), expected, rtol=1e-5, atol=1e-3)
    as_float = x8.astype(np.float32) / 255.0 * 2.0 - 1.0  # in image_range
    np.testing.assert_allclose(
        to_numpy(ae.encode(as_float)), expected, rtol=1e-5, atol=1e-3
    )
    z = to_numpy(ae.encode(as_float))
    raw = conv1x1(decoder.get_layer("dec_conv"), up2(z))
    np.testing.assert_allclose(
        to_numpy(ae.decode(z)),
        np.clip(raw / 255.0 * 2.0 - 1.0, -1, 1),
        rtol=1e-5,
        atol=1e-5,
    )


def test_autoencoder_callables_and_shape_inference():
    """Plain callables work; the latent shape comes from the encoder's
    output on `image_shape`, and an unknown image shape is a clear error."""
    encoder = CountingEncoder()
    ae = Autoencoder(encoder, lambda z: z, image_shape=(4, 6, 3))
    assert ae.latent_shape == (2, 3, 3)
    x = np.random.default_rng(1).random((3, 4, 6, 3), dtype=np.float32)
    b, h, w, c = x.shape
    pooled = x.reshape(b, 2, 2, 3, 2, c).mean(axis=(2, 4))
    np.testing.assert_allclose(to_numpy(ae.encode(x)), 2 * pooled, rtol=1e-6, atol=1e-6)
    unknown = Autoencoder(CountingEncoder(), lambda z: z)
    with pytest.raises(ValueError, match="image_shape"):
        _ = unknown.latent_shape
    with pytest.raises(ValueError, match="encode takes images of shape"):
        ae.encode(np.zeros((1, 4, 4, 3), "float32"))
    with pytest.raises(ValueError, match="decode takes latents of shape"):
        ae.decode(np.zeros((1, 2, 2, 3), "float32"))


def test_autoencoder_argument_checks():
    encoder, decoder = small_models()
    with pytest.raises(ValueError, match="scaling_factor"):
        Autoencoder(encoder, decoder, scaling_factor=0.0)
    with pytest.raises(ValueError, match="image_range"):
        Autoencoder(encoder, decoder, image_range=(1, 0))
    with pytest.raises(ValueError, match="posterior"):
        Autoencoder(encoder, decoder, posterior="gaussian")
    with pytest.raises(TypeError, match="encoder"):
        Autoencoder("encoder", decoder)
    ae = Autoencoder(encoder, decoder)
    with pytest.raises(TypeError, match="sample"):
        ae.encode(images(), sample=1)


def gaussian_encoder(x):
    """Posterior mean x, std 0.5 (log-variance log 0.25)."""
    return ops.concatenate([x, ops.full_like(x, math.log(0.25))], axis=-1)


def test_diagonal_gaussian_posterior():
    """The mean by default; sample=True draws mean + 0.5 * eps (times the
    scale), reproducible for an int seed, fresh for a SeedGenerator."""
    ae = Autoencoder(
        gaussian_encoder,
        lambda z: z,
        scaling_factor=2.0,
        posterior="diagonal_gaussian",
        image_shape=(8, 8, 2),
    )
    assert ae.latent_shape == (8, 8, 2) and ae.stochastic
    x = np.random.default_rng(0).random((64, 8, 8, 2), dtype=np.float32)
    np.testing.assert_allclose(to_numpy(ae.encode(x)), 2 * x, rtol=1e-6)
    s1 = to_numpy(ae.encode(x, sample=True, seed=3))
    s2 = to_numpy(ae.encode(x, sample=True, seed=3))
    np.testing.assert_array_equal(s1, s2)
    eps = (s1 - 2 * x) / (2 * 0.5)
    assert abs(eps.mean()) < 0.05 and abs(eps.std() - 1.0) < 0.05
    generator = keras.random.SeedGenerator(3)
    g1 = to_numpy(ae.encode(x, sample=True, seed=generator))
    g2 = to_numpy(ae.encode(x, sample=True, seed=generator))
    assert np.abs(g1 - g2).max() > 0.1
    # An odd number of encoder channels cannot be a mean and a log-variance.
    odd = Autoencoder(
        lambda x: x,
        lambda z: z,
        posterior="diagonal_gaussian",
        image_shape=(2, 2, 3),
    )
    with pytest.raises(ValueError, match="even number of channels"):
        odd.encode(np.zeros((1, 2, 2, 3), "float32"))


def test_autoencoder_keras_file_round_trip(tmp_path):
    """A `.keras` file of an Autoencoder with small user models gives the
    same encode/decode outputs and properties after loading."""
    encoder, decoder = small_models(channels=3, latent_channels=4, size=8)
    ae = Autoencoder(
        encoder,
        decoder,
        scaling_factor=0.3,
        image_range=(-1, 1),
        model_range=(0, 1),
        name="tiny_ae",
    )
    x = np.random.default_rng(2).uniform(-1, 1, (3, 8, 8, 3)).astype("float32")
    z = to_numpy(ae.encode(x))
    path = os.path.join(tmp_path, "ae.keras")
    ae.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is Autoencoder and loaded.name == "tiny_ae"
    assert loaded.scaling_factor == 0.3
    assert loaded.image_range == (-1.0, 1.0)
    assert loaded.model_range == (0.0, 1.0)
    assert loaded.latent_shape == (4, 4, 4)
    assert loaded.image_shape == (8, 8, 3)
    np.testing.assert_allclose(to_numpy(loaded.encode(x)), z, rtol=1e-6)
    np.testing.assert_allclose(
        to_numpy(loaded.decode(z)), to_numpy(ae.decode(z)), rtol=1e-6
    )
    # The file holds the weights: a fresh pair of models gives other latents.
    other = Autoencoder(*small_models(3, 4, 8, seed=5), scaling_factor=0.3)
    assert np.abs(to_numpy(other.encode(x)) - z).max() > 1e-3
    config = ae.get_config()
    assert config["latent_shape"] == [4, 4, 4]
    assert config["image_shape"] == [8, 8, 3]


def test_autoencoder_trainable_flag():
    encoder, decoder = small_models()
    ae = Autoencoder(encoder, decoder, trainable=False)
    assert ae.trainable_weights == [] and len(ae.weights) == 4
    ae.trainable = True
    assert len(ae.trainable_weights) == 4


def test_autoencoder_fits_as_a_reconstruction_model():
    """Called as a model it is the reconstruction, so `fit(x, x)` trains the
    encoder and decoder."""
    encoder, decoder = small_models()
    ae = Autoencoder(encoder, decoder, model_range=(-1, 1))
    x = images(64)
    ae.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    before = ae.evaluate(x, x, verbose=0)
    ae.fit(x, x, epochs=10, batch_size=16, verbose=0)
    after = ae.evaluate(x, x, verbose=0)
    assert after < 0.9 * before
    np.testing.assert_allclose(after, np.mean((to_numpy(ae(x)) - x) ** 2), rtol=1e-4)


# ------------------------------------------------------------ encode_dataset


def test_encode_dataset_arrays_and_labels():
    ae, counter = counting_autoencoder()
    x = images(7)
    labels = np.arange(7) % 3
    expected = to_numpy(ae.encode(x))
    counter.calls = 0
    latents = encode_dataset(ae, x, batch_size=3, verbose=0)
    assert counter.calls == 3  # ceil(7 / 3) batches
    np.testing.assert_allclose(latents, expected, rtol=1e-6)
    np.testing.assert_allclose(latents, 0.5 * 2 * pool2(x), rtol=1e-6)
    assert latents.dtype == np.float32 and latents.shape == (7, 2, 2, 1)
    out_latents, out_labels = encode_dataset(ae, (x, labels), batch_size=4, verbose=0)
    np.testing.assert_allclose(out_latents, expected, rtol=1e-6)
    np.testing.assert_array_equal(out_labels, labels)
    with pytest.raises(ValueError, match="7 images but 6 labels"):
        encode_dataset(ae, (x, labels[:6]), verbose=0)


def test_encode_dataset_tf_data_labels_aligned():
    """A shuffled tf.data dataset (unbatched and batched): each latent is
    the encoding of the image whose label comes with it."""
    tf = pytest.importorskip("tensorflow")
    ae, _ = counting_autoencoder()
    x = images(10)
    index = np.arange(10, dtype=np.int64)
    per_image = 0.5 * 2 * pool2(x)
    for batched in (False, True):
        dataset = tf.data.Dataset.from_tensor_slices((x, index)).shuffle(10, seed=1)
        if batched:
            dataset = dataset.batch(4)
        latents, labels = encode_dataset(ae, dataset, batch_size=3, verbose=0)
        assert sorted(labels.tolist()) == list(range(10))
        assert labels.tolist() != list(range(10))  # shuffled
        np.testing.assert_allclose(latents, per_image[labels], rtol=1e-6)
    images_only = tf.data.Dataset.from_tensor_slices(x)
    np.testing.assert_allclose(
        encode_dataset(ae, images_only, verbose=0), per_image, rtol=1e-6
    )
    dicts = tf.data.Dataset.from_tensor_slices({"images": x, "labels": index})
    latents, labels = encode_dataset(ae, dicts, verbose=0)
    np.testing.assert_array_equal(labels, index)
    with pytest.raises(ValueError, match="repeats forever"):
        encode_dataset(ae, images_only.repeat(), verbose=0)


def test_encode_dataset_npz_cache(tmp_path, capsys):
    """The second call loads the .npz and does not call the encoder; a cache
    that does not match the call is an error."""
    ae, counter = counting_autoencoder()
    x = images(6)
    labels = np.array([3, 1, 4, 1, 5, 9])
    path = os.path.join(tmp_path, "cache", "latents.npz")
    latents, out_labels = encode_dataset(
        ae, (x, labels), batch_size=4, path=path, verbose=1
    )
    assert counter.calls == 2 and os.path.isfile(path)
    assert "2/2" in capsys.readouterr().out  # the progress bar
    with np.load(path) as data:
        np.testing.assert_array_equal(data["latents"], latents)
        np.testing.assert_array_equal(data["labels"], labels)
    again, again_labels = encode_dataset(
        ae, (x, labels), batch_size=4, path=path, verbose=0
    )
    assert counter.calls == 2  # loaded, not encoded
    np.testing.assert_array_equal(again, latents)
    np.testing.assert_array_equal(again_labels, labels)
    encode_dataset(ae, (x, labels), path=path, overwrite=True, verbose=0)
    assert counter.calls == 3
    # Stale caches.
    plain = os.path.join(tmp_path, "plain.npz")
    encode_dataset(ae, x, path=plain, verbose=0)
    with pytest.raises(ValueError, match="dataset has labels and the cache"):
        encode_dataset(ae, (x, labels), path=plain, verbose=0)
    with pytest.raises(ValueError, match="scaling_factor"):
        encode_dataset(counting_autoencoder(0.25)[0], (x, labels), path=path, verbose=0)
    with pytest.raises(ValueError, match="5 images"):
        encode_dataset(ae, (x[:5], labels[:5]), path=path, verbose=0)
    with pytest.raises(ValueError, match="sample=False"):
        encode_dataset(ae, (x, labels), path=path, sample=True, verbose=0)


def test_encode_dataset_samples_with_seed():
    """sample=True with an int seed: reproducible, one fresh draw per batch
    (not the same noise in every batch)."""
    ae = Autoencoder(
        gaussian_encoder,
        lambda z: z,
        scaling_factor=1.0,
        posterior="diagonal_gaussian",
        image_shape=(4, 4, 1),
    )
    x = np.zeros((8, 4, 4, 1), "float32")
    a = encode_dataset(ae, x, batch_size=4, sample=True, seed=7, verbose=0)
    b = encode_dataset(ae, x, batch_size=4, sample=True, seed=7, verbose=0)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[:4] - a[4:]).max() > 0.1
    np.testing.assert_array_equal(encode_dataset(ae, x, verbose=0), np.zeros_like(a))


def test_import_without_keras_cv():
    """`import keras_immiscible` and the user-autoencoder API work without
    keras-cv; StableDiffusionVAE says how to install it."""
    code = (
        "import sys; sys.modules['keras_cv'] = None\n"
        "import keras_immiscible as ki\n"
        "assert ki.latent.Autoencoder and ki.latent.encode_dataset\n"
        "try:\n"
        "    ki.latent.StableDiffusionVAE(weights=None, image_size=32)\n"
        "except ImportError as e:\n"
        "    assert 'keras-immiscible[latent]' in str(e), e\n"
        "    print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


# --------------------------------------------------- StableDiffusionVAE


def _keras_cv_stable_diffusion():
    pytest.importorskip("keras_cv")
    from keras_cv.models import stable_diffusion

    return stable_diffusion


@pytest.fixture(scope="module")
def sd_vae():
    _keras_cv_stable_diffusion()
    keras.utils.set_random_seed(0)
    return ki.latent.StableDiffusionVAE(weights=None, image_size=32)


@pytest.fixture(scope="module")
def keras_cv_models(sd_vae):
    """keras-cv's own ImageEncoder and Decoder with the VAE's weights."""
    stable_diffusion = _keras_cv_stable_diffusion()
    encoder = stable_diffusion.ImageEncoder(download_weights=False)
    decoder = stable_diffusion.Decoder(32, 32, download_weights=False)
    encoder.set_weights(sd_vae.encoder.get_weights())
    decoder.set_weights(sd_vae.decoder.get_weights())
    return encoder, decoder


def sd_images(n=2, seed=0):
    return np.random.default_rng(seed).random((n, 32, 32, 3), "float32")


@pytest.mark.slow
def test_sd_vae_shapes_and_ranges(sd_vae):
    assert sd_vae.image_shape == (32, 32, 3)
    assert sd_vae.latent_shape == (4, 4, 4)
    assert sd_vae.scaling_factor == 0.18215
    assert sd_vae.image_range == (0.0, 1.0)
    assert sd_vae.model_range == (-1.0, 1.0)
    assert sd_vae.stochastic and sd_vae.image_size == (32, 32)
    assert sd_vae.trainable_weights == []  # frozen by default
    assert sd_vae.count_params() > 80_000_000
    z = to_numpy(sd_vae.encode(sd_images()))
    assert z.shape == (2, 4, 4, 4) and z.dtype == np.float32
    assert np.all(np.isfinite(z)) and z.std() > 0
    decoded = to_numpy(sd_vae.decode(z))
    assert decoded.shape == (2, 32, 32, 3) and decoded.dtype == np.float32
    assert decoded.min() >= 0.0 and decoded.max() <= 1.0
    assert decoded.std() > 0
    assert sd_vae.get_config() == {
        "name": "stable_diffusion_vae",
        "trainable": False,
        "weights": None,
        "image_size": [32, 32],
        "image_range": [0.0, 1.0],
    }
    with pytest.raises(ValueError, match="multiples of 8"):
        ki.latent.StableDiffusionVAE(weights=None, image_size=30)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ki.latent.StableDiffusionVAE(weights="/nonexistent/vae.weights.h5")


@pytest.mark.slow
def test_sd_vae_scaling_matches_keras_cv(sd_vae, keras_cv_models):
    """encode = 0.18215 * (the encoder's posterior mean on 2x - 1), as keras-
    cv's ImageEncoder computes it; decode = (keras-cv's Decoder(z) + 1) / 2,
    clipped; sample=True draws mean + exp(logvar / 2) * eps."""
    kcv_encoder, kcv_decoder = keras_cv_models
    x = sd_images()
    z = to_numpy(sd_vae.encode(x))
    moments = to_numpy(sd_vae.encoder(2 * x - 1))
    assert moments.shape == (2, 4, 4, 8)
    np.testing.assert_allclose(z, 0.18215 * moments[..., :4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        z, to_numpy(kcv_encoder(2 * x - 1)), rtol=1e-4, atol=1e-5
    )
    raw = to_numpy(kcv_decoder(z))
    np.testing.assert_allclose(
        to_numpy(sd_vae.decode(z, clip=False)),
        (raw + 1) / 2,
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        to_numpy(sd_vae.decode(z)),
        np.clip((raw + 1) / 2, 0, 1),
        rtol=1e-4,
        atol=1e-5,
    )
    sampled = to_numpy(sd_vae.encode(x, sample=True, seed=0))
    std = 0.18215 * np.exp(0.5 * np.clip(moments[..., 4:], -30, 20))
    eps = (sampled.astype(np.float64) - z) / std
    assert abs(eps.mean()) < 0.35 and 0.7 < eps.std() < 1.3  # 128 draws


@pytest.mark.slow
def test_sd_vae_local_weights(sd_vae, keras_cv_models, tmp_path):
    """weights= a folder of keras-cv's files (legacy h5, as downloaded), a
    pair of files, or a `.weights.h5` from save_weights: the loaded VAE
    computes what the VAE it came from computes (a random one does not)."""
    kcv_encoder, kcv_decoder = keras_cv_models
    x = sd_images(1, seed=3)
    z = to_numpy(sd_vae.encode(x))
    try:
        import h5py
        from keras.src.legacy.saving import legacy_h5_format
    except ImportError:  # private Keras API: use Keras 3 files instead
        legacy_h5_format = None
    if legacy_h5_format is not None:
        for model, name in (
            (kcv_encoder, "vae_encoder.h5"),
            (kcv_decoder, "kcv_decoder.h5"),
        ):
            with h5py.File(os.path.join(tmp_path, name), "w") as f:
                legacy_h5_format.save_weights_to_hdf5_group(f, model)
        weights = str(tmp_path)
    else:
        kcv_encoder.save_weights(os.path.join(tmp_path, "e.weights.h5"))
        kcv_decoder.save_weights(os.path.join(tmp_path, "d.weights.h5"))
        weights = (
            os.path.join(tmp_path, "e.weights.h5"),
            os.path.join(tmp_path, "d.weights.h5"),
        )
    loaded = ki.latent.StableDiffusionVAE(weights=weights, image_size=32)
    np.testing.assert_allclose(to_numpy(loaded.encode(x)), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(loaded.decode(z)),
        to_numpy(sd_vae.decode(z)),
        rtol=1e-5,
        atol=1e-5,
    )
    # Its own save_weights file, into a VAE of another image size (the
    # weights do not depend on it).
    path = os.path.join(tmp_path, "vae.weights.h5")
    sd_vae.save_weights(path)
    del loaded
    other = ki.latent.StableDiffusionVAE(weights=path, image_size=(16, 24))
    assert other.latent_shape == (2, 3, 4)
    x_small = np.random.default_rng(4).random((1, 16, 24, 3), "float32")
    np.testing.assert_allclose(
        to_numpy(other.encode(x_small)),
        to_numpy(kcv_encoder(2 * x_small - 1)),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.slow
def test_sd_vae_download_goes_through_keras_cv(monkeypatch):
    """weights="download" asks keras.utils.get_file (keras-cv's download)
    for the SD VAE files; a failed download says what to do offline."""
    _keras_cv_stable_diffusion()
    origins = []

    def offline(*args, origin=None, **kwargs):
        origins.append(origin)
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(RuntimeError, match="Offline, copy vae_encoder.h5"):
        ki.latent.StableDiffusionVAE(weights="download", image_size=32)
    assert origins and origins[0].endswith("/vae_encoder.h5")
