"""Latency, throughput and peak memory of an artifact in its runtime, timed in a separate process.

A fresh process per benchmark keeps the numbers honest: no memory of the calling process (the PyTorch model,
the data) counts as the artifact's, and the runtime gets the thread count it is asked for. Artifacts that are
compared (a stage against the baseline, one runtime against another) are timed by :func:`interleaved` instead: side
by side in one process, in alternating rounds, so that load on a shared machine hits them alike; a speed-up is
the median of the per-round ratios with its interquartile range (:func:`speedup`), and one whose range crosses 1.0
is no measurable difference. The worker runs as a script (``python -P``, so its folder does not shadow modules on
sys.path) to keep torch out of ONNX runs, and calls the ``bench`` entry of the artifact's registered runtime.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgecompress.errors import EdgeCompressError
from edgecompress.runtimes import get
from edgecompress.runtimes.base import exit_reason

if TYPE_CHECKING:
    from edgecompress.runtimes import Artifact

WORKER = Path(__file__).with_name("_bench_worker.py")


def _check_files(artifact: Artifact) -> None:
    for f in artifact.files:
        if not Path(f).is_file():
            raise EdgeCompressError("artifact file not found", where=str(f), fix="export the model again")


def _run_worker(cfg: dict, threads: int, where: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-P", str(WORKER), json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise EdgeCompressError(f"benchmark worker failed: {exit_reason(proc)}", where=where,
                                fix="check that the artifact runs: artifact.runner()(batch)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def benchmark(artifact: Artifact, input_shape: Sequence[int], *, threads: int = 1, batch: int = 1,
              warmup: int = 10, repeats: int = 50, vocab_size: int | None = None) -> dict[str, float | None]:
    """Time ``artifact`` on a fixed random float32 batch of shape ``[batch, *input_shape]`` (with ``vocab_size``:
    random token ids of that shape below ``vocab_size`` and an all-ones attention mask, i.e. one forward pass over
    ``input_shape[0]`` tokens per sequence).

    Returns latency_p50_ms, latency_p95_ms, latency_mean_ms (per batch), throughput_sps (samples/s =
    batch / mean latency), peak_memory_mb (model load + inference in MiB, the runtime's import excluded),
    load_s (model load time) and rapl_energy_mj (RAPL energy per sample, None where RAPL is not readable).
    """
    _check_files(artifact)
    cfg = {"entry": get(artifact.runtime).bench_entry, "path": str(artifact.path), "input_shape": list(input_shape),
           "threads": threads, "batch": batch, "warmup": warmup, "repeats": repeats, "vocab_size": vocab_size}
    return _run_worker(cfg, threads, str(artifact.path))


def interleaved(artifacts: Sequence[Artifact], input_shape: Sequence[int], *, threads: int = 1, batch: int = 1,
                rounds: int = 7, repeats: int = 50, warmup: int = 10, vocab_size: int | None = None,
                shapes: Sequence[Sequence[int]] | None = None, fastest: bool = False) -> list[list[float]]:
    """Time ``artifacts`` side by side in one fresh process: ``rounds`` rounds, each running every artifact
    ``max(3, repeats // rounds)`` times in turn (so about ``repeats`` timed runs each in all). Returns, per
    artifact, the median latency of each round in milliseconds (ms per batch of ``batch``; the fastest run of the
    round with ``fastest``). ``shapes``: each artifact's own input shape, instead of ``input_shape``."""
    for artifact in artifacts:
        _check_files(artifact)
    specs = [{"entry": get(a.runtime).bench_entry, "path": str(a.path)} for a in artifacts]
    if shapes is not None:
        for spec, shape in zip(specs, shapes, strict=True):
            spec["input_shape"] = list(shape)
    cfg = {"artifacts": specs, "input_shape": list(input_shape), "threads": threads, "batch": batch,
           "warmup": warmup, "rounds": rounds, "repeats": max(3, repeats // rounds), "vocab_size": vocab_size,
           "statistic": "min" if fastest else "median"}
    by_round = _run_worker(cfg, threads, ", ".join(str(a.path) for a in artifacts))["rounds_ms"]
    return [list(column) for column in zip(*by_round)]


def burst_runs(artifact: Artifact, input_shape: Sequence[int], *, threads: int = 1, batch: int = 1,
               seconds: float = 0.1, most: int | None = None) -> int:
    """Runs per burst for :func:`interleaved` so that a burst of ``artifact`` lasts about ``seconds`` (at least 3,
    at most ``most``), from three runs timed in the worker. Bursts of a fixed count are milliseconds long for a
    small model at batch 1, and their medians then scatter by tens of percent."""
    once = statistics.median(interleaved([artifact], input_shape, threads=threads, batch=batch, rounds=1, repeats=3,
                                         warmup=2)[0])
    runs = max(3, round(seconds * 1e3 / once))
    return runs if most is None else min(most, runs)


def speedup(reference_ms: Sequence[float], ms: Sequence[float]) -> dict[str, float | int | bool]:
    """How much faster ``ms`` is than ``reference_ms`` (per-round latencies of :func:`interleaved`): the median of
    the per-round ratios, their quartiles ``q1``/``q3``, the number of rounds, and ``measurable``: False when the
    interquartile range includes 1.0 (no measurable difference)."""
    ratios = sorted(r / m for r, m in zip(reference_ms, ms, strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {"median": round(statistics.median(ratios), 3), "q1": round(q1, 3), "q3": round(q3, 3),
            "rounds": len(ratios), "measurable": not q1 <= 1.0 <= q3}


def interleaved_calls(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """In this process (for runners that are not one artifact file, e.g. an early-exit runner): seconds of one call
    of each function in each of ``rounds`` rounds, the functions taking turns within a round (so a load change on a
    shared machine hits all alike); one untimed call of each first."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return times
