"""`ImmiscibleFlowMatching`: flow matching / rectified flow with assigned noise."""

import keras
from keras import ops

from keras_immiscible.models.immiscible_diffusion import ImmiscibleDiffusion
from keras_immiscible.schedules import LinearInterpolation
from keras_immiscible.utils.arguments import check_number

TIME_SAMPLINGS = ("uniform", "logit_normal")


@keras.saving.register_keras_serializable(package="keras_immiscible")
class ImmiscibleFlowMatching(ImmiscibleDiffusion):
    """Flow matching (rectified flow) trained with immiscible noise assignment.

    The data `x0` (in [-1, 1]) and its *assigned* noise `eps` are joined by
    the straight path `x_t = (1 - t) x0 + t eps`, and the network regresses
    the path's velocity `eps - x0` at `x_t` (conditioned on `t`). With
    assignment the pairs `(x0, eps)` are closer and the paths cross less,
    which is where Immiscible Diffusion's speed-up comes from (paper 2
    reports CIFAR-10 FID 5.07 -> 3.68 with KNN assignment).

    `generate` integrates the learned ODE from `t = 1` (noise) to `t = 0`
    with Euler or Heun steps. It shares its training loop, assignment and
    sampling code with `ImmiscibleDiffusion`, with the schedule fixed to
    `keras_immiscible.schedules.LinearInterpolation` and the prediction to
    `"velocity"`.

    Args:
        network: the velocity network, a `keras.Model` called as
            `network([x_t, t])` (+ labels), e.g.
            `keras_immiscible.layers.UNet(...)`.
        assignment: `"linear"`, `"knn"`, `None` (plain flow matching) or a
            `keras_immiscible.assignment.NoiseAssigner`.
        sampler: default sampler of `generate`: `"euler"`, `"heun"`, or a
            sampler instance (`"ddim"` works too: on this path its
            deterministic update is the Euler step).
        time_sampling: `"uniform"` times in [0, 1], or `"logit_normal"`,
            `t = sigmoid(n)` with `n ~ N(logit_mean, logit_std**2)`
            (Esser et al., 2024), which trains more on intermediate times.
        logit_mean: mean of the logit-normal time distribution.
        logit_std: standard deviation of the logit-normal distribution.
        loss_type: `"mse"` or `"mae"` between predicted and true velocity.
        data_dtype: `"float32"` (images in [0, 1]) or `"uint8"`; `None`
            takes it from the first training batch.
        seed: int seed of the model's `SeedGenerator` (noise, times).

    Example:

    ```python
    import keras, keras_immiscible as ki
    net = ki.layers.UNet(image_shape=(8, 8, 1), widths=(32, 64), block_depth=1)
    model = ki.ImmiscibleFlowMatching(net, assignment="knn")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, use_ema=True))
    model.fit(ki.data.load_digits(), batch_size=128, epochs=1)
    samples = model.generate(16, steps=50, sampler="heun", seed=0)
    ```
    """

    default_steps = 50

    def __init__(
        self,
        network,
        assignment="linear",
        sampler="euler",
        time_sampling="uniform",
        logit_mean=0.0,
        logit_std=1.0,
        loss_type="mse",
        data_dtype=None,
        seed=None,
        **kwargs,
    ):
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(
                f"`time_sampling` must be one of {TIME_SAMPLINGS}, got "
                f"{time_sampling!r}."
            )
        logit_mean = check_number(logit_mean, "logit_mean")
        logit_std = check_number(logit_std, "logit_std", low=0, low_open=True)
        for key in ("schedule", "prediction"):
            if key in kwargs:
                raise TypeError(
                    f"ImmiscibleFlowMatching fixes `{key}` (the straight path "
                    "and its velocity); use ImmiscibleDiffusion to choose it."
                )
        super().__init__(
            network,
            schedule=LinearInterpolation(),
            assignment=assignment,
            prediction="velocity",
            sampler=sampler,
            loss_type=loss_type,
            data_dtype=data_dtype,
            seed=seed,
            **kwargs,
        )
        self.time_sampling = time_sampling
        self.logit_mean = logit_mean
        self.logit_std = logit_std

    def sample_times(self, batch_size):
        """Draws training times: uniform, or logit-normal in (0, 1)."""
        if self.time_sampling == "uniform":
            return super().sample_times(batch_size)
        logits = keras.random.normal(
            (batch_size,),
            mean=self.logit_mean,
            stddev=self.logit_std,
            seed=self.seed_generator,
        )
        return ops.sigmoid(logits)

    def get_config(self):
        config = super().get_config()
        del config["schedule"], config["prediction"]
        config.update(
            {
                "time_sampling": self.time_sampling,
                "logit_mean": self.logit_mean,
                "logit_std": self.logit_std,
            }
        )
        return config
