"""The README's Quickstart blocks run as written (training shortened).

Both Python blocks of the "Quickstart" section are executed in order, in one
namespace, in a temporary folder; only `epochs=67` becomes `epochs=1` (the
test fails if that text is gone, so a changed README is noticed here).
"""

import re
from pathlib import Path

import numpy as np
import scipy.optimize

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart_blocks():
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_quickstart_blocks_run_and_do_what_they_say(tmp_path, monkeypatch):
    blocks = quickstart_blocks()
    assert len(blocks) == 2, "the Quickstart has a training and an assignment block"
    training, assignment = blocks
    assert "epochs=67" in training
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(
        compile(training.replace("epochs=67", "epochs=1"), "README", "exec"), namespace
    )
    samples = np.asarray(namespace["samples"])
    assert samples.shape == (16, 16, 16, 1) and samples.dtype == np.float32
    assert 0.0 <= samples.min() and samples.max() <= 1.0 and samples.std() > 0.01
    assert (tmp_path / "model.keras").exists()
    # The reloaded model generates what the trained one did (same seed).
    again = np.asarray(namespace["model"].generate(16, steps=10, seed=0))
    np.testing.assert_allclose(again, samples, atol=1e-5)

    exec(compile(assignment, "README", "exec"), namespace)
    cost = np.asarray(namespace["cost"], np.float64)
    cols = np.asarray(namespace["cols"])
    assert sorted(cols.tolist()) == list(range(64))
    rows, best = scipy.optimize.linear_sum_assignment(cost)
    optimum = cost[rows, best].sum()
    total = cost[np.arange(64), cols].sum()
    assert total - optimum <= 1e-3 * (
        np.trace(cost) - optimum
    )  # the auction's tolerance
    noise = np.asarray(namespace["noise"])
    assert noise.shape == namespace["images"].shape
    assert float(namespace["gain"]) > 0.0
