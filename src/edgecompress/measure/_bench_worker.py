"""Benchmark worker: times one artifact in a fresh process and prints one JSON line on stdout.

Started by :func:`edgecompress.measure.latency.benchmark` as a script, ``python -P _bench_worker.py '<json>'``,
with the keys path, runtime, input_shape, threads, batch, warmup, repeats. It is run by path, not with
``-m``, because importing the ``edgecompress`` package imports torch and the whole toolkit: this file
imports only the standard library, numpy and the artifact's runtime (no torch for ONNX), so it starts fast.
Its runners use the same settings as ``edgecompress.export.runtimes``.

Peak memory: the resident set (VmRSS) is read after the runtime is imported and the input is built, the
high-water mark is reset (``/proc/self/clear_refs``; where that is refused the mark may include import-time
peaks), and after loading the model and running warmup + repeats, VmHWM minus that baseline is reported:
model load plus inference, the runtime's own import excluded.
"""

from __future__ import annotations

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


def _onnxruntime_loader(path: str, threads: int) -> Callable[[], Runner]:
    """Same session options as ``edgecompress.export.runtimes.onnxruntime_runner``, without importing torch."""
    import onnxruntime as ort

    def load() -> Runner:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]

    return load


def _torch_loader(path: str, threads: int) -> Callable[[], Runner]:
    """Same as ``edgecompress.export.runtimes.torch_runner``: the module of a ``torch.export`` archive.

    A one-weight archive is exported, saved and loaded first (about 2 s of CPU), so that the ~100 MiB of modules that
    ``torch.export.load`` imports on first use count as the runtime's import, not as the model's memory.
    """
    import tempfile

    import torch
    import torchao  # noqa: F401  (registers the quantized ops that INT8 .pt2 archives use)

    with tempfile.TemporaryDirectory() as tmp:
        warm = f"{tmp}/warm.pt2"
        torch.export.save(torch.export.export(torch.nn.Linear(1, 1), (torch.zeros(1, 1),)), warm)
        torch.export.load(warm).module()(torch.zeros(1, 1))

    def load() -> Runner:
        torch.set_num_threads(threads)
        module = torch.export.load(path).module()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(x))

        return run

    return load


def _executorch_loader(path: str, threads: int) -> Callable[[], Runner]:
    """Same as ``edgecompress.export.executorch.executorch_runner``: the ``forward`` method of a ``.pte`` program,
    XNNPACK thread pool at ``threads``, inputs above the program's batch in chunks (its Python runtime needs torch)."""
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    def load() -> Runner:
        portable_lib._unsafe_reset_threadpool(threads)
        program = Runtime.get().load_program(path)
        method = program.load_method("forward")
        limit = method.metadata.input_tensor_meta(0).sizes()[0]

        def run(x: np.ndarray) -> list:
            _ = program  # the method needs its program alive
            return [method.execute((chunk,)) for chunk in torch.from_numpy(x).split(limit)]

        return run

    return load


# runtime -> import the runtime now, return a function that loads the model later
LOADERS = {"onnxruntime": _onnxruntime_loader, "torch": _torch_loader, "executorch": _executorch_loader}


def run(cfg: dict) -> dict:
    """Load the artifact, run warmup + repeats on a fixed random batch, return timing and memory."""
    load = LOADERS[cfg["runtime"]](cfg["path"], cfg["threads"])
    batch = cfg["batch"]
    x = np.random.default_rng(0).standard_normal((batch, *cfg["input_shape"]), dtype=np.float32)
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
