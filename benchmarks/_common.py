"""Helpers shared by the benchmark scripts: timing, records, subprocesses.

Every script writes a JSON list of flat records to `docs/benchmarks/`: a
header record (`"header": true`, with the command, machine and date) and one
record per measurement.
"""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# Lines of TensorFlow/XLA start-up chatter that say nothing about the run.
_NOISE = (
    "WARNING: All log messages before absl",
    "I0000",
    "E0000",
    "W0000",
    "oneDNN",
    "TF_ENABLE_ONEDNN_OPTS",
    "rebuild TensorFlow",
    "cuda",
    "Unable to register",
    "computation placer",
)


def machine():
    """One line describing the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f} at start"
    return f"{cpu}, {os.cpu_count()} CPUs{load}, no GPU used"


def header(script, argv=None, **extra):
    """The header record of a results file."""
    argv = sys.argv if argv is None else argv
    record = {
        "header": True,
        "script": script,
        "command": "python " + " ".join(argv),
        "machine": machine(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
    }
    record.update(extra)
    return record


def versions():
    """Versions of the libraries the numbers depend on (those installed)."""
    from importlib import metadata

    out = {}
    for name in (
        "keras",
        "numpy",
        "scipy",
        "jax",
        "jaxlib",
        "tensorflow-cpu",
        "tensorflow",
        "torch",
        "optax",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def time_call(fn, sync=lambda x: x):
    """Seconds one call of `fn` takes, results synchronised with `sync`."""
    start = time.perf_counter()
    sync(fn())
    return time.perf_counter() - start


def median(values):
    return float(statistics.median(values)) if values else float("nan")


def write_json(path, records):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
        f.write("\n")


def read_json(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def run_worker(script, backend, args, env_extra=None):
    """Runs `script args` in a subprocess with `KERAS_BACKEND=backend`.

    The worker prints one JSON record per line, prefixed by `RECORD `; they
    are collected and returned. Its other output passes through, minus
    TensorFlow's start-up noise.
    """
    env = dict(os.environ)
    env["KERAS_BACKEND"] = backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(env_extra or {})
    process = subprocess.Popen(
        [sys.executable, script] + list(args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    records = []
    for line in process.stdout:
        if line.startswith("RECORD "):
            record = json.loads(line[len("RECORD ") :])
            records.append(record)
            print(f"[{backend}] {_short(record)}", flush=True)
        elif not any(token in line for token in _NOISE):
            print(f"[{backend}] {line.rstrip()}", flush=True)
    code = process.wait()
    if code != 0:
        records.append({"backend": backend, "error": f"worker exited with code {code}"})
    return records


def emit(record):
    """Sends one record from a worker to the parent process."""
    print("RECORD " + json.dumps(record), flush=True)


def _short(record):
    keys = (
        "method",
        "arm",
        "batch_size",
        "dims",
        "median_ms",
        "ratio",
        "skipped",
        "error",
    )
    return ", ".join(f"{k}={record[k]}" for k in keys if k in record)


def fmt_ms(value):
    """Milliseconds for a table: 3 significant digits, thousands separated."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
