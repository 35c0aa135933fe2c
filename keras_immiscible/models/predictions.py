"""What a denoising network predicts, and how to convert between targets.

The forward process is `x_t = signal * x0 + noise_rate * eps`. A network can
predict any one of

- `"epsilon"`: the noise `eps`;
- `"x0"`: the data `x0`;
- `"v"`: `signal * eps - noise_rate * x0` (Salimans & Ho, 2022); on a
  variance-preserving schedule (`signal**2 + noise_rate**2 == 1`) it is the
  rate of change of `x_t` along the schedule's angle, and on any other path
  (e.g. `LinearInterpolation`) it is still a valid target, converted exactly;
- `"velocity"`: `eps - x0`, the flow-matching velocity `d x_t / d t` of the
  linear path `x_t = (1 - t) x0 + t eps` (for other paths it is still a
  valid target, but not the time derivative).

Given `x_t`, any one of them determines the other two (`split`); `target`
computes them from known data and noise.
"""

PREDICTIONS = ("epsilon", "v", "x0", "velocity")


def target(prediction, data, noise, signal_rate, noise_rate):
    """The regression target of a network predicting `prediction`.

    Args:
        prediction: one of `PREDICTIONS`.
        data: the clean data `x0`.
        noise: the (assigned) noise `eps`.
        signal_rate: the signal rate, broadcastable against `data`.
        noise_rate: the noise rate, broadcastable against `data`.

    Returns:
        A tensor shaped like `data`.
    """
    if prediction == "epsilon":
        return noise
    if prediction == "x0":
        return data
    if prediction == "v":
        return signal_rate * noise - noise_rate * data
    if prediction == "velocity":
        return noise - data
    raise ValueError(f"`prediction` must be one of {PREDICTIONS}, got {prediction!r}.")


def split(prediction, output, noisy, signal_rate, noise_rate):
    """Converts a network output into `(pred_noise, pred_data)`.

    Args:
        prediction: what `output` is, one of `PREDICTIONS`.
        output: the network output.
        noisy: the network input `x_t = signal * x0 + noise_rate * eps`.
        signal_rate: the signal rate, broadcastable against `noisy`.
        noise_rate: the noise rate, broadcastable against `noisy`.

    Returns:
        `(pred_noise, pred_data)`, both shaped like `noisy`.

    Example:

    ```python
    eps, x0 = split("v", v, x_t, signal_rate, noise_rate)
    ```
    """
    if prediction == "epsilon":
        pred_noise = output
        pred_data = (noisy - noise_rate * pred_noise) / signal_rate
    elif prediction == "x0":
        pred_data = output
        pred_noise = (noisy - signal_rate * pred_data) / noise_rate
    elif prediction == "v":
        # x_t = a x0 + b eps and v = a eps - b x0: a rotation scaled by
        # a^2 + b^2, which is 1 only on variance-preserving schedules.
        # Dividing by it keeps the conversion exact on any path.
        norm = signal_rate * signal_rate + noise_rate * noise_rate
        pred_data = (signal_rate * noisy - noise_rate * output) / norm
        pred_noise = (noise_rate * noisy + signal_rate * output) / norm
    elif prediction == "velocity":
        # x_t = a x0 + b eps and u = eps - x0 give x0 and eps in closed form.
        total = signal_rate + noise_rate
        pred_data = (noisy - noise_rate * output) / total
        pred_noise = (noisy + signal_rate * output) / total
    else:
        raise ValueError(
            f"`prediction` must be one of {PREDICTIONS}, got {prediction!r}."
        )
    return pred_noise, pred_data
