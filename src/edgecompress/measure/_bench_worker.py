"""Benchmark worker: times one artifact in a fresh process and prints one JSON line on stdout.

Started by :func:`edgecompress.measure.latency.benchmark` as a script, ``python -P _bench_worker.py '<json>'``,
with the keys entry (the runtime's ``bench`` function, ``module:function``), path, input_shape, threads, batch,
warmup, repeats (or, to compare several artifacts in interleaved rounds, ``artifacts``: [{entry, path}, ...] and
rounds: see :func:`run_interleaved`), and optionally vocab_size: then the input is token ids
``[batch, *input_shape]`` drawn below vocab_size with an all-ones attention mask (a dict ``input_ids``/``attention_mask`` of int64), not float noise. It is run by path, not with ``-m``, because importing the ``edgecompress`` package imports torch
and the whole toolkit: this file imports only the standard library, numpy and the runtime's module with what it
needs (no torch for ONNX), so it starts fast.

Peak memory: the resident set (VmRSS) is read after the runtime is imported and the input is built, the
high-water mark is reset (``/proc/self/clear_refs``; where that is refused the mark may include import-time
peaks), and after loading the model and running warmup + repeats, VmHWM minus that baseline is reported:
model load plus inference, the runtime's own import excluded.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RAPL = Path("/sys/class/powercap/intel-rapl:0")

Runner = Callable[[np.ndarray], np.ndarray]


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _read_rapl_uj() -> int | None:
    """The CPU package energy counter in microjoules, or None where RAPL is absent or not readable."""
    try:
        return int((RAPL / "energy_uj").read_text())
    except (OSError, ValueError):
        return None


def _rapl_mj(start: int | None, end: int | None) -> float | None:
    """Energy between two counter readings in millijoules (one counter wrap-around allowed)."""
    if start is None or end is None:
        return None
    if end < start:
        end += int((RAPL / "max_energy_range_uj").read_text())
    return (end - start) / 1e3


def load_entry(spec: str) -> Callable[[str, int], Callable[[], Runner]]:
    """The runtime's ``bench`` function named by ``module:function``. The ``edgecompress`` package is entered
    without running its ``__init__`` (which imports torch and the whole toolkit): a runtime module imports only
    what its runtime needs."""
    module, _, name = spec.partition(":")
    if module.startswith("edgecompress.") and "edgecompress" not in sys.modules:
        sys.modules["edgecompress"] = importlib.util.module_from_spec(importlib.util.find_spec("edgecompress"))
    return getattr(importlib.import_module(module), name)


def _input(cfg: dict) -> np.ndarray | dict[str, np.ndarray]:
    """The fixed random batch every timed run gets (token ids with ``vocab_size``, else float noise)."""
    rng, shape = np.random.default_rng(0), (cfg["batch"], *cfg["input_shape"])
    if cfg.get("vocab_size"):
        ids = rng.integers(0, cfg["vocab_size"], shape, dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    return rng.standard_normal(shape, dtype=np.float32)


def run_interleaved(cfg: dict) -> dict:
    """Several artifacts (``artifacts``: a list of {entry, path} and optionally its own input_shape) loaded side by
    side and timed in ``rounds`` rounds of ``repeats`` runs each, artifact after artifact (each round starts at the
    next artifact, so none is always first): machine load that comes and goes hits all of them alike. Each is loaded
    as ``shared`` (for ONNX Runtime: one thread pool for the process, so no session's idle threads take the cores
    from the one that runs). Returns ``rounds_ms``: per round, each artifact's median run in milliseconds (its
    fastest with ``statistic: "min"``)."""
    specs = cfg["artifacts"]
    runners = [load_entry(a["entry"])(a["path"], cfg["threads"], True)() for a in specs]
    inputs = [_input({**cfg, "input_shape": a.get("input_shape", cfg["input_shape"])}) for a in specs]
    statistic, n = np.min if cfg.get("statistic") == "min" else np.median, len(runners)
    for runner, x in zip(runners, inputs):
        for _ in range(cfg["warmup"]):
            runner(x)
    rounds = []
    for r in range(cfg["rounds"]):
        medians = [0.0] * n
        for i in [(r + k) % n for k in range(n)]:
            runner, x, times = runners[i], inputs[i], []
            for _ in range(cfg["repeats"]):
                t = time.perf_counter()
                runner(x)
                times.append(time.perf_counter() - t)
            medians[i] = float(statistic(times)) * 1e3
        rounds.append(medians)
    return {"rounds_ms": rounds}


def run(cfg: dict) -> dict:
    """Load the artifact, run warmup + repeats on a fixed random batch, return timing and memory."""
    if "artifacts" in cfg:
        return run_interleaved(cfg)
    load = load_entry(cfg["entry"])(cfg["path"], cfg["threads"])
    batch = cfg["batch"]
    x = _input(cfg)
    baseline_kib = _status_kib("VmRSS")
    _reset_peak_rss()
    t0 = time.perf_counter()
    runner = load()
    load_s = time.perf_counter() - t0
    for _ in range(cfg["warmup"]):
        runner(x)
    times = []
    rapl_start = _read_rapl_uj()
    for _ in range(cfg["repeats"]):
        t = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - t)
    rapl_end = _read_rapl_uj()
    peak_kib = _status_kib("VmHWM") - baseline_kib
    ms = np.array(times) * 1e3
    rapl_mj = _rapl_mj(rapl_start, rapl_end)
    return {
        "latency_p50_ms": float(np.percentile(ms, 50)),
        "latency_p95_ms": float(np.percentile(ms, 95)),
        "latency_mean_ms": float(ms.mean()),
        "throughput_sps": float(batch / (ms.mean() / 1e3)),
        "peak_memory_mb": peak_kib / 1024,
        "load_s": load_s,
        "rapl_energy_mj": rapl_mj / (batch * cfg["repeats"]) if rapl_mj is not None else None,
    }


if __name__ == "__main__":
    try:
        print(json.dumps(run(json.loads(sys.argv[1]))))
    except Exception as err:  # one line on stderr (and exit status 1): the caller reports it as the reason
        sys.exit(" ".join(f"{type(err).__name__}: {err}".split()))
