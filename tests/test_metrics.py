"""FID, KID, feature extractors and `evaluate_generator`.

Values are checked against independent references: closed forms,
`scipy.linalg.sqrtm`, scikit-learn's polynomial kernel, PIL's resize and
hand-written estimators.
"""

import json
import os
import time

import keras
import numpy as np
import pytest
import scipy.linalg
from sklearn.metrics.pairwise import polynomial_kernel as sk_polynomial_kernel

import keras_immiscible.metrics.digits_classifier as digits_module
from keras_immiscible import metrics
from keras_immiscible.data import load_digits


def identity(x):
    """Identity feature extractor: features are the flattened inputs."""
    return keras.ops.reshape(keras.ops.convert_to_tensor(x), (x.shape[0], -1))


def np_identity(x):
    """Identity in numpy float64 (no float32 round trip on JAX)."""
    return np.reshape(np.asarray(x, dtype=np.float64), (x.shape[0], -1))


def correlated_features(rng, n, d, shift=0.0, scale=1.0):
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mixing) * scale + shift


def reference_fid(x, y):
    """pytorch-fid-style FID with scipy.linalg.sqrtm (float64)."""
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2.0 * covmean))


def reference_mmd2(x, y):
    """Unbiased MMD^2 with sklearn's polynomial kernel and explicit masks."""
    d = x.shape[1]
    kxx = sk_polynomial_kernel(x, x, degree=3, gamma=1.0 / d, coef0=1)
    kyy = sk_polynomial_kernel(y, y, degree=3, gamma=1.0 / d, coef0=1)
    kxy = sk_polynomial_kernel(x, y, degree=3, gamma=1.0 / d, coef0=1)
    m, n = len(x), len(y)
    off_x = ~np.eye(m, dtype=bool)
    off_y = ~np.eye(n, dtype=bool)
    return kxx[off_x].mean() + kyy[off_y].mean() - 2.0 * kxy.mean()


def gaussian_mean_kernel(mu, nu, d):
    """E[(x.y/d + 1)^3] for independent x ~ N(mu, I), y ~ N(nu, I).

    x.y is a sum of independent products z_i = x_i y_i; its first three
    moments follow from the cumulants of the z_i.
    """
    ez = mu * nu
    ez2 = (1 + mu**2) * (1 + nu**2)
    ez3 = (mu**3 + 3 * mu) * (nu**3 + 3 * nu)
    k1 = ez.sum()
    k2 = (ez2 - ez**2).sum()
    k3 = (ez3 - 3 * ez * ez2 + 2 * ez**3).sum()
    es, es2, es3 = k1, k2 + k1**2, k3 + 3 * k2 * k1 + k1**3
    return 1 + 3 * es / d + 3 * es2 / d**2 + es3 / d**3


# ------------------------------------------------------------------- FID


def test_fid_of_a_set_against_itself_is_zero():
    rng = np.random.default_rng(0)
    x = correlated_features(rng, 300, 12, shift=3.0)
    fid = metrics.FID(feature_extractor=identity)
    fid.update_state(x, x)
    assert abs(float(fid.result())) < 1e-8
    # Same set in another order and in other batches: still 0.
    fid.reset_state()
    fid.update_state(x[:100], x[rng.permutation(300)])
    fid.update_state(x[100:], None)
    assert abs(float(fid.result())) < 1e-6


def test_fid_closed_form_for_diagonal_gaussians():
    """Feature sets whose sample mean and covariance are exactly the
    Gaussian parameters, so the FID must equal the closed form."""
    rng = np.random.default_rng(1)
    n, d = 400, 6

    def exact_set(mu, variances):
        z = rng.normal(size=(n, d))
        q, _ = np.linalg.qr(z - z.mean(axis=0))  # centred, orthonormal columns
        return mu + q * np.sqrt((n - 1) * variances)

    mu1, s1 = rng.normal(size=d), rng.uniform(0.2, 3.0, size=d)
    mu2, s2 = rng.normal(size=d) + 1.0, rng.uniform(0.2, 3.0, size=d)
    x, y = exact_set(mu1, s1), exact_set(mu2, s2)
    np.testing.assert_allclose(np.cov(x, rowvar=False), np.diag(s1), atol=1e-10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2.0 * np.sqrt(s1 * s2))
    fid = metrics.FID(feature_extractor=np_identity)
    fid.update_state(x, y)
    np.testing.assert_allclose(float(fid.result()), expected, rtol=1e-9)
    # The same through the backend identity (float32 on JAX).
    fid32 = metrics.FID(feature_extractor=identity)
    fid32.update_state(x, y)
    np.testing.assert_allclose(float(fid32.result()), expected, rtol=1e-4)
    # And the plain function.
    np.testing.assert_allclose(
        float(metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))),
        expected,
        rtol=1e-12,
    )


def test_fid_matches_scipy_sqrtm_reference():
    rng = np.random.default_rng(2)
    x = correlated_features(rng, 500, 16, shift=0.5)
    y = correlated_features(rng, 350, 16, shift=-0.2, scale=1.4)
    fid = metrics.FID(feature_extractor=identity)
    fid.update_state(x, y)
    np.testing.assert_allclose(float(fid.result()), reference_fid(x, y), rtol=1e-3)
    mu, cov = fid.statistics("generated")
    np.testing.assert_allclose(mu, y.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cov, np.cov(y, rowvar=False), rtol=1e-4, atol=1e-5)


def test_fid_handles_fewer_samples_than_dimensions():
    """Singular covariances: no complex numbers, matches the reference."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 32)), rng.normal(size=(12, 32)) + 0.3
    fid = metrics.FID(feature_extractor=np_identity)
    fid.update_state(x, y)
    value = float(fid.result())
    assert np.isfinite(value) and value > 0
    np.testing.assert_allclose(value, reference_fid(x, y), rtol=1e-3)


def test_streaming_in_batches_equals_one_batch():
    rng = np.random.default_rng(4)
    x = correlated_features(rng, 250, 10, shift=2.0)
    y = correlated_features(rng, 230, 10, shift=2.5)
    one_fid = metrics.FID(feature_extractor=identity, batch_size=1000)
    one_kid = metrics.KID(feature_extractor=identity, subset_size=60, num_subsets=5)
    many_fid = metrics.FID(feature_extractor=identity, batch_size=7)
    many_kid = metrics.KID(feature_extractor=identity, subset_size=60, num_subsets=5)
    for m in (one_fid, one_kid):
        m.update_state(x, y)
    cuts_x, cuts_y = [0, 3, 90, 91, 250], [0, 100, 101, 229, 230]
    for metric in (many_fid, many_kid):
        for i in range(4):
            metric.update_state(
                x[cuts_x[i] : cuts_x[i + 1]], y[cuts_y[i] : cuts_y[i + 1]]
            )
    assert many_fid.num_real == 250 and many_fid.num_generated == 230
    np.testing.assert_allclose(
        float(many_fid.result()), float(one_fid.result()), rtol=1e-9
    )
    np.testing.assert_allclose(
        float(many_kid.result()), float(one_kid.result()), rtol=1e-12
    )


# ------------------------------------------------------------------- KID


def test_kid_matches_independent_reference():
    rng = np.random.default_rng(5)
    x = correlated_features(rng, 120, 8, shift=0.3)
    y = correlated_features(rng, 90, 8, scale=1.2)
    # Subsets as large as the sets: one estimate on all samples... but the
    # sets differ in size, so use m = 90 subsets and compare the full-set
    # estimate through `polynomial_mmd2_unbiased` directly as well.
    np.testing.assert_allclose(
        float(metrics.polynomial_mmd2_unbiased(x, y)),
        reference_mmd2(x, y),
        rtol=1e-3,
    )
    kid = metrics.KID(feature_extractor=identity, subset_size=1000)
    kid.update_state(x[:90], y)
    np.testing.assert_allclose(
        float(kid.result()), reference_mmd2(x[:90], y), rtol=1e-3
    )
    assert float(kid.result_std()) == 0.0  # one subset: the full sets


def test_kid_subset_average_estimates_the_full_set_value():
    """Averaged over all subset pairs, the subset U-statistics equal the
    full-set U-statistic; many random subsets get close to it."""
    rng = np.random.default_rng(6)
    x = correlated_features(rng, 100, 6)
    y = correlated_features(rng, 100, 6, shift=0.4)
    kid = metrics.KID(feature_extractor=np_identity, subset_size=50, num_subsets=400)
    kid.update_state(x, y)
    full = reference_mmd2(x, y)
    tolerance = 4.0 * float(kid.result_std()) / np.sqrt(400)
    assert abs(float(kid.result()) - full) < tolerance
    # The subset draws are seeded: the same seed gives the same value.
    again = metrics.KID(feature_extractor=np_identity, subset_size=50, num_subsets=400)
    again.update_state(x, y)
    assert float(again.result()) == float(kid.result())


def test_kid_is_unbiased_and_grows_with_mean_shift():
    d, n, repeats = 4, 300, 20
    rng = np.random.default_rng(7)
    means = []
    for shift in (0.0, 0.25, 0.5, 1.0):
        mu, nu = np.zeros(d), np.full(d, shift)
        expected = (
            gaussian_mean_kernel(mu, mu, d)
            + gaussian_mean_kernel(nu, nu, d)
            - 2.0 * gaussian_mean_kernel(mu, nu, d)
        )
        values = []
        for _ in range(repeats):
            kid = metrics.KID(feature_extractor=np_identity, subset_size=n)
            kid.update_state(rng.normal(size=(n, d)), rng.normal(size=(n, d)) + nu)
            values.append(float(kid.result()))
        mean, sem = np.mean(values), np.std(values) / np.sqrt(repeats)
        assert abs(mean - expected) < 4.0 * sem + 1e-3, (shift, mean, expected)
        means.append(mean)
    assert abs(means[0]) < 0.02  # same distribution: expectation 0
    assert means[0] < means[1] < means[2] < means[3]


def test_kid_max_samples_keeps_a_uniform_sample():
    rng = np.random.default_rng(8)
    stream = np.arange(300, dtype=np.float64)[:, None] * np.ones((1, 3))
    kept_means = []
    for seed in range(40):
        kid = metrics.KID(feature_extractor=np_identity, max_samples=50, seed=seed)
        for start in range(0, 300, 37):
            kid.update_state(stream[start : start + 37], rng.normal(size=(5, 3)))
        kept = kid.features("real")
        assert kept.shape == (50, 3) and kid.num_real == 300
        rows = kept[:, 0].astype(int)
        assert len(set(rows)) == 50 and rows.min() >= 0 and rows.max() < 300
        kept_means.append(rows.mean())
    # Uniform over 0..299: mean 149.5; the std of a 50-sample mean is ~12,
    # of the average over 40 seeds ~2.
    assert abs(np.mean(kept_means) - 149.5) < 10.0
    # Under the cap, everything is kept in order.
    kid = metrics.KID(feature_extractor=np_identity, max_samples=500)
    kid.update_state(stream, stream)
    np.testing.assert_array_equal(kid.features("generated"), stream)


# --------------------------------------------------- state, config, errors


def test_reset_state_and_reset_generated():
    rng = np.random.default_rng(9)
    x, y, z = (correlated_features(rng, 80, 5, shift=s) for s in (0.0, 1.0, 2.0))
    for cls in (metrics.FID, metrics.KID):
        metric = cls(feature_extractor=identity)
        metric.update_state(x, y)
        first = float(metric.result())
        metric.reset_state()
        assert metric.num_real == 0 and metric.num_generated == 0
        with pytest.raises(ValueError, match="at least 2"):
            metric.result()
        metric.update_state(x, y)
        assert float(metric.result()) == pytest.approx(first, rel=1e-12)
        # Keep the real statistics, swap the generated set.
        metric.reset_generated()
        assert metric.num_real == 80 and metric.num_generated == 0
        metric.update_generated(z)
        fresh = cls(feature_extractor=identity)
        fresh.update_state(x, z)
        assert float(metric.result()) == pytest.approx(float(fresh.result()), rel=1e-12)


def test_get_config_round_trip():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(60, 4)) + 0.5
    kid = metrics.KID(
        feature_extractor=np_identity,
        subset_size=20,
        num_subsets=7,
        max_samples=55,
        seed=3,
        name="my_kid",
    )
    config = kid.get_config()
    assert config["name"] == "my_kid"
    assert (
        config["subset_size"],
        config["num_subsets"],
        config["max_samples"],
        config["seed"],
    ) == (20, 7, 55, 3)
    clone = metrics.KID.from_config(config)
    for m in (kid, clone):
        m.update_state(x, y)
    assert float(clone.result()) == float(kid.result())

    fid = metrics.FID(feature_extractor="digits", batch_size=32)
    config = fid.get_config()
    json.dumps(config)  # built-in extractor specs serialize
    assert config["feature_extractor"] == "digits" and config["batch_size"] == 32
    clone = metrics.FID.from_config(config)
    assert clone.name == "fid" and clone.batch_size == 32
    inception = metrics.FID(weights=None).get_config()
    assert inception["feature_extractor"] is None and inception["weights"] is None


def test_fid_and_kid_are_not_keras_metrics_and_compile_says_so():
    # Plain classes with the metric methods: a compiled step cannot run
    # their host float64 statistics, so compile(metrics=...) must fail
    # clearly, not with a tracer conversion error (JAX, TensorFlow) or a
    # "needs real samples" error after eating the training batch (torch).
    import keras_immiscible as ki

    rng = np.random.default_rng(12)
    images = rng.random((16, 8, 8, 1)).astype("float32")
    for metric in (
        metrics.FID(feature_extractor=identity),
        metrics.KID(feature_extractor=identity, name="my_kid"),
    ):
        assert not isinstance(metric, keras.metrics.Metric)
        assert metric.name in repr(metric)
        with pytest.raises(TypeError, match="not a keras.metrics.Metric"):
            metric(images, images)
        noisy = keras.Input((8, 8, 1))
        level = keras.Input((1, 1, 1))
        out = keras.layers.Conv2D(1, 1)(noisy) + 0.0 * level
        model = ki.ImmiscibleDiffusion(
            keras.Model([noisy, level], out), assignment=None, seed=0
        )
        model.compile(optimizer="sgd", metrics=[metric])
        with pytest.raises(
            TypeError,
            match=f"metric '{metric.name}'.*compile.*GenerativeEvaluation",
        ):
            model.fit(images, batch_size=8, epochs=1, verbose=0)
        # The metric itself still works, eagerly.
        x = correlated_features(rng, 40, 4)
        metric.update_state(x, x + 1.0)
        assert float(metric.result()) > 0.1


def test_configs_written_by_the_keras_metric_versions_still_load():
    # Before FID/KID became plain classes, get_config() also had "dtype".
    clone = metrics.FID.from_config(
        {
            "name": "fid",
            "dtype": "float32",
            "feature_extractor": "digits",
            "weights": "imagenet",
            "batch_size": 16,
        }
    )
    assert clone.name == "fid" and clone.batch_size == 16
    assert "dtype" not in clone.get_config()
    assert metrics.KID(feature_extractor=identity).name == "kid"


def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(11)
    images = rng.random((4, 8, 8, 1)).astype("float32")
    fid = metrics.FID(feature_extractor=identity)
    with pytest.raises(ValueError, match="generated_images.*per-image shape"):
        fid.update_state(images, rng.random((4, 8, 8, 3)).astype("float32"))
    fid = metrics.FID(feature_extractor=identity)
    with pytest.raises(ValueError, match="real_images.*rank 1"):
        fid.update_state(np.ones(5, dtype="float32"), images)
    nan_images = images.copy()
    nan_images[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="generated_images.*NaN"):
        metrics.KID(feature_extractor=identity).update_state(images, nan_images)
    with pytest.raises(ValueError, match="real_images.*empty"):
        fid.update_state(images[:0], images)
    with pytest.raises(TypeError, match="real_images"):
        fid.update_state("images.png", images)
    with pytest.raises(ValueError, match="sample_weight"):
        fid.update_state(images, images, sample_weight=np.ones(4))
    with pytest.raises(ValueError, match="both are None"):
        fid.update_state()
    # Features of another width than before.
    fid = metrics.FID(feature_extractor=identity)
    fid.update_features(real_features=np.ones((3, 4)))
    with pytest.raises(ValueError, match="generated_features.*4"):
        fid.update_features(generated_features=np.ones((3, 5)))
    # An extractor that does not return (n, d).
    bad = metrics.FID(feature_extractor=lambda x: np.ones((len(x), 2, 2)))
    with pytest.raises(ValueError, match="feature_extractor"):
        bad.update_state(images, images)
    # Inception-specific checks (nothing is built for these).
    inception = metrics.FID(weights=None)
    with pytest.raises(ValueError, match="generated_images.*NHWC"):
        inception.update_state(images, images[0])
    with pytest.raises(ValueError, match="real_images.*\\[0, 1\\]"):
        inception.update_state(images * 255.0, images)
    with pytest.raises(ValueError, match="real_images.*channels"):
        inception.update_state(rng.random((2, 8, 8, 2)).astype("float32"), images)
    # Constructor arguments.
    with pytest.raises(ValueError, match="subset_size"):
        metrics.KID(feature_extractor=identity, subset_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        metrics.FID(feature_extractor=identity, batch_size=0)
    with pytest.raises(ValueError, match="feature_extractor"):
        metrics.FID(feature_extractor="resnet")
    with pytest.raises(TypeError, match="feature_extractor"):
        metrics.FID(feature_extractor=42)
    with pytest.raises(ValueError, match="sigma2"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))


# ------------------------------------------------------ feature extractors


def test_keras_model_feature_extractor_matches_numpy():
    rng = np.random.default_rng(12)
    kernel = rng.normal(size=(16, 5)).astype("float32")
    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(5)]
    )
    model.set_weights([kernel, np.zeros(5, "float32")])
    x = rng.random((70, 4, 4, 1)).astype("float32")
    y = rng.random((50, 4, 4, 1)).astype("float32") * 0.5
    fid = metrics.FID(feature_extractor=model, batch_size=32)  # padded last batch
    fid.update_state(x, y)
    fx, fy = x.reshape(70, -1) @ kernel, y.reshape(50, -1) @ kernel
    np.testing.assert_allclose(float(fid.result()), reference_fid(fx, fy), rtol=1e-3)


def test_inception_preprocessing_matches_pil_bilinear():
    """Resize to 299 (antialiased when downsampling), grey tiled to RGB,
    [0, 1] -> [-1, 1]; compared with PIL's BILINEAR resize."""
    from PIL import Image

    extractor = metrics.InceptionFeatureExtractor(weights=None)
    rng = np.random.default_rng(13)
    for shape in [(8, 8, 1), (40, 30, 3), (420, 350, 3)]:
        images = rng.integers(0, 256, size=(1,) + shape).astype("uint8")
        ours = keras.ops.convert_to_numpy(extractor.preprocess(images))[0]
        channels = [
            np.asarray(
                Image.fromarray(
                    images[0, :, :, c].astype("float32") / 255.0, mode="F"
                ).resize((299, 299), Image.BILINEAR)
            )
            for c in range(shape[-1])
        ]
        reference = np.stack(channels * (3 // shape[-1]), axis=-1)
        reference = np.clip(reference, 0.0, 1.0) * 2.0 - 1.0
        assert ours.shape == (299, 299, 3)
        np.testing.assert_allclose(ours, reference, atol=2e-4)
    # uint8 and float [0, 1] inputs are the same images.
    images = rng.integers(0, 256, size=(2, 8, 8, 1)).astype("uint8")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(extractor.preprocess(images)),
        keras.ops.convert_to_numpy(extractor.preprocess(images / 255.0)),
        atol=1e-6,
    )


@pytest.mark.slow
def test_inception_default_path_offline():
    """FID(weights=None) builds Inception-V3 without network, takes (N, 8,
    8, 1) uint8 digits (resized to 299, tiled to RGB) and gives 0 for
    identical sets."""
    images = load_digits(dtype="uint8")[:2]
    fid = metrics.FID(weights=None)
    kid = metrics.KID(weights=None)
    fid.update_state(images, images)
    assert abs(float(fid.result())) < 1e-6
    extractor = fid.get_feature_extractor()
    assert kid.get_feature_extractor() is extractor  # one shared model
    # Float [0, 1] images are the same images as uint8 / 255.
    features = extractor(images / 255.0)
    assert features.shape == (2, 2048) and np.all(np.isfinite(features))
    assert np.all(features >= 0)  # average-pooled ReLU outputs
    assert np.ptp(features, axis=0).max() > 0  # the two images differ
    mean, _ = fid.statistics("real")
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_inception_local_weights_file(tmp_path):
    """A local weights file gives the features of the model it came from."""
    images = load_digits(dtype="uint8")[:2]
    extractor = metrics.InceptionFeatureExtractor(weights=None)
    path = os.path.join(tmp_path, "inception_notop.weights.h5")
    extractor.model.save_weights(path)
    from_file = metrics.InceptionFeatureExtractor(weights=path)
    np.testing.assert_allclose(
        from_file(images), extractor(images), rtol=1e-4, atol=1e-5
    )


def test_inception_weights_argument_is_passed_to_keras(tmp_path, monkeypatch):
    """`weights` reaches keras.applications.InceptionV3 unchanged (a path
    as an absolute path); missing files fail before any build."""
    from keras_immiscible.metrics import feature_extractors

    calls = []

    def fake_inception(**kwargs):
        calls.append(kwargs)
        return keras.Sequential(
            [keras.Input((299, 299, 3)), keras.layers.GlobalAveragePooling2D()]
        )

    monkeypatch.setattr(keras.applications, "InceptionV3", fake_inception)
    monkeypatch.setattr(feature_extractors, "_INCEPTION_MODELS", {})
    path = tmp_path / "local.weights.h5"
    path.write_bytes(b"")
    extractor = metrics.InceptionFeatureExtractor(weights=path)
    features = extractor(np.full((2, 8, 8, 1), 255, "uint8"))
    np.testing.assert_allclose(features, np.ones((2, 3)), atol=1e-6)  # [-1, 1] -> 1
    assert calls == [
        dict(
            include_top=False,
            weights=str(path),
            input_shape=(299, 299, 3),
            pooling="avg",
        )
    ]
    with pytest.raises(ValueError, match="does not exist"):
        metrics.InceptionFeatureExtractor(weights=tmp_path / "nope.h5")
    with pytest.raises(ValueError, match="does not exist"):
        metrics.FID(weights=str(tmp_path / "nope.h5"))
    with pytest.raises(TypeError, match="weights"):
        metrics.KID(weights=3)


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_extractor(tmp_path_factory):
    """Trained once per module, cached in a temporary directory."""
    cache_dir = tmp_path_factory.mktemp("digits_cache")
    saved = dict(digits_module._CACHE)
    digits_module._CACHE.clear()
    start = time.perf_counter()
    extractor = metrics.digits_feature_extractor(cache_dir=cache_dir)
    elapsed = time.perf_counter() - start
    yield extractor, cache_dir, elapsed
    digits_module._CACHE.clear()
    digits_module._CACHE.update(saved)


def test_digits_extractor_separates_the_classes(digits_extractor):
    extractor, _, elapsed = digits_extractor
    assert elapsed < 60.0  # a few seconds on an idle CPU core
    test_x, test_y = load_digits(split="test", return_labels=True)
    train_x, train_y = load_digits(split="train", return_labels=True)
    accuracy = np.mean(extractor.classify(test_x) == test_y)
    assert accuracy >= 0.95, accuracy
    # The 64-d features themselves separate the classes: nearest class mean
    # (fitted on the train split) on held-out digits.
    train_f, test_f = extractor(train_x), extractor(test_x)
    assert test_f.shape == (len(test_x), 64) and test_f.dtype == np.float32
    centroids = np.stack([train_f[train_y == k].mean(axis=0) for k in range(10)])
    nearest = np.argmin(((test_f[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert np.mean(nearest == test_y) >= 0.9
    # uint8 images are read as value / 255.
    as_uint8 = load_digits(split="test", dtype="uint8")
    np.testing.assert_allclose(
        extractor(as_uint8), extractor(as_uint8 / 255.0), atol=1e-4
    )
    with pytest.raises(ValueError, match="images.*8, 8, 1"):
        extractor(np.zeros((2, 10, 10, 1), "float32"))


def test_digits_extractor_is_cached_on_disk(digits_extractor, monkeypatch):
    extractor, cache_dir, _ = digits_extractor
    files = [f for f in os.listdir(cache_dir) if f.endswith(".weights.h5")]
    assert files == [f"digits_classifier_{digits_module.recipe_key()}.weights.h5"]
    # A new process (empty memory cache) loads the file instead of training.
    monkeypatch.setattr(digits_module, "_CACHE", {})

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the weights were cached")

    monkeypatch.setattr(digits_module, "_train", no_training)
    loaded = metrics.digits_feature_extractor(cache_dir=cache_dir)
    images = load_digits(split="test")[:50]
    np.testing.assert_allclose(loaded(images), extractor(images), atol=1e-6)
    # The key depends on the recipe, not on the backend.
    assert keras.backend.backend() not in json.dumps(digits_module.RECIPE)


def test_digits_fid_ranks_real_above_noise(digits_extractor):
    test_x = load_digits(split="test")
    train_x = load_digits(split="train")
    noise = np.random.default_rng(14).random(test_x.shape).astype("float32")
    fid = metrics.FID(feature_extractor="digits")
    fid.update_state(train_x, test_x)
    real_vs_real = float(fid.result())
    fid.reset_generated()
    fid.update_generated(noise)
    assert float(fid.result()) > 20.0 * real_vs_real


# ------------------------------------------------------ evaluate_generator


class GaussianGenerator:
    """Stand-in generator: seeded Gaussian images around `mean`."""

    def __init__(self, mean, shape=(4, 4, 1)):
        self.mean, self.shape, self.calls = mean, shape, []

    def generate(self, num_images, steps=20, seed=0):
        self.calls.append((num_images, steps, seed))
        rng = np.random.default_rng(seed)
        return (self.mean + rng.normal(size=(num_images,) + self.shape)).astype(
            "float32"
        )


def test_evaluate_generator_matches_direct_computation():
    rng = np.random.default_rng(15)
    real = rng.normal(size=(90, 4, 4, 1)).astype("float32")
    model = GaussianGenerator(mean=0.5)
    scores = metrics.evaluate_generator(
        model,
        real,
        metrics=("fid", "kid"),
        num_images=50,
        steps=7,
        seed=3,
        batch_size=20,
        feature_extractor=np_identity,
        subset_size=40,
        num_subsets=10,
        verbose=0,
    )
    assert model.calls == [(20, 7, 3), (20, 7, 4), (10, 7, 5)]
    generated = np.concatenate(
        [
            GaussianGenerator(0.5).generate(n, seed=s)
            for n, s in ((20, 3), (20, 4), (10, 5))
        ]
    )
    flat_real, flat_gen = real.reshape(90, -1), generated.reshape(50, -1)
    assert set(scores) == {"fid", "kid"}
    np.testing.assert_allclose(
        scores["fid"], reference_fid(flat_real, flat_gen), rtol=1e-3
    )
    kid = metrics.KID(feature_extractor=np_identity, subset_size=40, num_subsets=10)
    kid.update_state(real, generated)
    np.testing.assert_allclose(scores["kid"], float(kid.result()), rtol=1e-9)

    # The same real data as an iterable of (images, labels) batches and
    # (when TensorFlow is installed) as a tf.data.Dataset.
    batches = [
        (real[i : i + 32], np.zeros(len(real[i : i + 32]))) for i in range(0, 90, 32)
    ]
    sources = [batches]
    try:
        import tensorflow as tf

        sources.append(tf.data.Dataset.from_tensor_slices(real).batch(25))
    except ImportError:
        pass
    for source in sources:
        again = metrics.evaluate_generator(
            GaussianGenerator(0.5),
            source,
            metrics=["fid"],
            num_images=50,
            steps=7,
            seed=3,
            batch_size=20,
            feature_extractor=np_identity,
            verbose=0,
        )
        np.testing.assert_allclose(again["fid"], scores["fid"], rtol=1e-9)
    # `num_real_images` limits the real set.
    limited = metrics.evaluate_generator(
        GaussianGenerator(0.5),
        batches,
        metrics=["fid"],
        num_images=50,
        steps=7,
        seed=3,
        batch_size=20,
        num_real_images=40,
        feature_extractor=np_identity,
        verbose=0,
    )
    np.testing.assert_allclose(
        limited["fid"], reference_fid(flat_real[:40], flat_gen), rtol=1e-3
    )
    with pytest.raises(ValueError, match="metrics"):
        metrics.evaluate_generator(model, real, metrics=["is"], verbose=0)
    with pytest.raises(TypeError, match="generate"):
        metrics.evaluate_generator(
            object(), real, feature_extractor=np_identity, verbose=0
        )


def test_metric_argument_messages():
    def identity(x):
        return x

    cases = [
        (
            lambda: metrics.KID(feature_extractor=identity, subset_size=1),
            ValueError,
            "`subset_size` must be an int >= 2, got 1.",
        ),
        (
            lambda: metrics.KID(feature_extractor=identity, seed=0.5),
            TypeError,
            "`seed` must be an int, got 0.5.",
        ),
        (
            lambda: metrics.FID(feature_extractor=identity, batch_size=0),
            ValueError,
            "`batch_size` must be a positive int, got 0.",
        ),
    ]
    for make, error, message in cases:
        with pytest.raises(error) as info:
            make()
        assert str(info.value) == message


def test_digits_extractor_maps_upsampled_digits_back_to_8x8():
    """Digits upsampled to 16x16 or 32x32 (grey or 3 channels, float or
    uint8) get the classifier's features of the 8x8 digits themselves; other
    shapes are refused."""
    import keras_immiscible as ki

    extractor = ki.metrics.digits_feature_extractor()
    digits = ki.data.load_digits()[:40]
    reference = extractor(digits)
    labels = extractor.classify(digits)
    for size in (16, 32):
        upsampled = ki.data.load_digits(image_size=size)[:40]
        for images in (upsampled, np.repeat(upsampled, 3, axis=-1)):
            np.testing.assert_allclose(extractor(images), reference, atol=1e-5)
            np.testing.assert_array_equal(extractor.classify(images), labels)
        as_uint8 = np.round(upsampled * 255).astype("uint8")
        np.testing.assert_allclose(
            extractor(as_uint8),
            extractor(np.round(digits * 255).astype("uint8")),
            atol=1e-5,
        )
    # A block mean, not a corner pick: a 2x2 checkerboard of 0/1 averages to 0.5.
    board = np.zeros((1, 16, 16, 1), "float32")
    board[:, ::2, ::2] = board[:, 1::2, 1::2] = 1.0
    np.testing.assert_allclose(
        extractor(board), extractor(np.full((1, 8, 8, 1), 0.5, "float32")), atol=1e-5
    )
    for shape in ((2, 12, 12, 1), (2, 16, 8, 1), (2, 64)):
        with pytest.raises(ValueError, match="8k"):
            extractor(np.zeros(shape, "float32"))


class ClassMeanGenerator:
    """Stand-in class-conditional generator: image value = its label."""

    def __init__(self):
        self.calls = []

    def generate(self, num_images, steps=20, seed=0, labels=None):
        self.calls.append(np.array(labels).tolist())
        values = np.broadcast_to(np.asarray(labels, "float32"), (num_images,))
        return np.ones((num_images, 2, 2, 1), "float32") * values[:, None, None, None]


def test_evaluate_generator_slices_per_image_labels_per_batch():
    real = np.repeat(np.arange(5, dtype="float32"), 4)[:, None, None, None]
    real = np.ones((20, 2, 2, 1), "float32") * real
    model = ClassMeanGenerator()
    labels = [0, 1, 2, 3, 4]
    metrics.evaluate_generator(
        model,
        real,
        metrics=("fid",),
        num_images=5,
        batch_size=2,
        feature_extractor=np_identity,
        generate_kwargs={"labels": labels},
        verbose=0,
    )
    assert model.calls == [[0, 1], [2, 3], [4]]
    # One label for all: passed on as it is.
    model = ClassMeanGenerator()
    metrics.evaluate_generator(
        model,
        real,
        metrics=("fid",),
        num_images=3,
        batch_size=2,
        feature_extractor=np_identity,
        generate_kwargs={"labels": 4},
        verbose=0,
    )
    assert model.calls == [4, 4]
    with pytest.raises(ValueError, match="one per generated image"):
        metrics.evaluate_generator(
            ClassMeanGenerator(),
            real,
            metrics=("fid",),
            num_images=5,
            batch_size=2,
            feature_extractor=np_identity,
            generate_kwargs={"labels": [0, 1]},
            verbose=0,
        )
    from keras_immiscible import callbacks

    with pytest.raises(ValueError, match="one per generated image"):
        callbacks.GenerativeEvaluation(
            real,
            metrics=("fid",),
            num_images=5,
            feature_extractor=np_identity,
            generate_kwargs={"labels": [0, 1]},
        )
