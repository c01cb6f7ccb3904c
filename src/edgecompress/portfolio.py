"""DNNShifter's portfolio and runtime switching (methods.md §4.2-4.3).

:class:`Portfolio` turns every level of a sparse portfolio (``prune.lottery`` checkpoints) into a smaller dense
model with ``prune.shifter``, exports both the sparse parent (dense tensors with zeros, as it would ship) and
the shifted model to ONNX, and measures accuracy, bytes, MACs and ONNX Runtime latency per level.
:class:`Server` keeps every shifted model loaded (one ORT session each), picks the level that meets a latency
or memory budget, and swaps the served model in memory; :meth:`Server.reload_seconds` times the alternative,
loading the model from disk.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecompress.checkpoint import load_model
from edgecompress.tasks import Task
from edgecompress.errors import EdgeCompressError
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.measure import benchmark, count_macs, count_params
from edgecompress.prune.lottery import sparsity
from edgecompress.prune.shifter import shift


@dataclass
class Level:
    """One portfolio level: the sparse parent and its shifted (dense, smaller) model, side by side."""

    level: int
    sparsity: float
    sparse_onnx: str
    dense_onnx: str
    accuracy_sparse: float | None
    accuracy_dense: float | None
    max_abs_diff: float
    params_sparse: int
    params_dense: int
    macs_sparse: int
    macs_dense: int
    bytes_sparse: int
    bytes_dense: int
    latency_sparse_ms: float | None
    latency_dense_ms: float | None
    peak_memory_dense_mb: float | None
    channels_removed: int
    channels_kept_dead: int
    shift_seconds: float

    @property
    def size_ratio(self) -> float:
        return self.bytes_sparse / self.bytes_dense

    @property
    def speedup(self) -> float | None:
        if self.latency_sparse_ms is None or self.latency_dense_ms is None:
            return None
        return self.latency_sparse_ms / self.latency_dense_ms


def least_contended(artifact, input_shape: tuple[int, ...], rounds: int, **kwargs) -> dict:
    """The benchmark run with the lowest p50 latency of ``rounds`` runs: on a shared machine the fastest run is
    the one least disturbed by other processes."""
    return min((benchmark(artifact, input_shape, **kwargs) for _ in range(rounds)), key=lambda r: r["latency_p50_ms"])


def _ort_accuracy(path: Path, task: Task) -> float:
    from edgecompress.export.artifact import Artifact

    return task.evaluate(Artifact(path, "onnx", "onnxruntime").runner(1), "test")["accuracy"]


class Portfolio:
    """Levels of one model family, each as sparse parent + shifted dense model (ONNX files in ``out``)."""

    def __init__(self, levels: list[Level], input_shape: tuple[int, ...]):
        self.levels, self.input_shape = levels, tuple(input_shape)

    @classmethod
    def build(cls, models: list[nn.Module], out: Path, input_shape: tuple[int, ...], task: Task | None = None, *,
              latency: bool = True, threads: int = 1, repeats: int = 50, batch: int = 1,
              rounds: int = 1) -> Portfolio:
        """Shift, export and measure every model (level i = ``models[i]``); files go to ``out``. Latency is the
        ONNX Runtime p50 per batch of ``batch`` (separate process), the lowest of ``rounds`` measurements."""
        out = Path(out)
        x = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(0))
        levels = []
        for i, sparse in enumerate(models):
            sparse = sparse.eval()
            dense, report = shift(sparse, x[:2])
            with torch.no_grad():
                diff = float((dense(x) - sparse(x)).abs().max())
            paths = {}
            for kind, model in (("sparse", sparse), ("dense", dense)):
                paths[kind] = export_onnx(model, x[:1], out / f"level_{i}_{kind}.onnx").path
            bench = {k: least_contended(_artifact(p), input_shape, rounds, threads=threads, repeats=repeats,
                                        batch=batch) if latency else {} for k, p in paths.items()}
            levels.append(Level(
                level=i, sparsity=sparsity(sparse), sparse_onnx=str(paths["sparse"]), dense_onnx=str(paths["dense"]),
                accuracy_sparse=_ort_accuracy(paths["sparse"], task) if task is not None else None,
                accuracy_dense=_ort_accuracy(paths["dense"], task) if task is not None else None,
                max_abs_diff=diff, params_sparse=count_params(sparse), params_dense=count_params(dense),
                macs_sparse=count_macs(sparse, x), macs_dense=count_macs(dense, x),
                bytes_sparse=paths["sparse"].stat().st_size, bytes_dense=paths["dense"].stat().st_size,
                latency_sparse_ms=bench["sparse"].get("latency_p50_ms"),
                latency_dense_ms=bench["dense"].get("latency_p50_ms"),
                peak_memory_dense_mb=bench["dense"].get("peak_memory_mb"),
                channels_removed=report["channels_removed"], channels_kept_dead=report["channels_kept_dead"],
                shift_seconds=report["seconds"]))
        portfolio = cls(levels, input_shape)
        (out / "portfolio.json").write_text(json.dumps(portfolio.table(), indent=2))
        return portfolio

    @classmethod
    def from_dir(cls, path: Path, out: Path | None = None, task: Task | None = None, **kwargs) -> Portfolio:
        """Build from the ``level_<i>/`` checkpoints ``prune.lottery`` left anywhere under ``path``."""
        from edgecompress.baseline import build_from_arch
        from edgecompress.rundir import read_json

        found = sorted(Path(path).rglob("level_*/model.json"),
                       key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
        if not found:
            raise EdgeCompressError("no portfolio levels (level_<i>/model.json) found", where=str(path),
                                    fix="point to a run or stage directory of prune.lottery")
        models = []
        for meta in found:
            arch = read_json(meta, keys=("arch",))["arch"]
            if not isinstance(arch, dict) or "input_shape" not in arch:
                raise EdgeCompressError("checkpoint does not say how to rebuild its architecture", where=str(meta),
                                        fix="build the portfolio in Python: Portfolio.build(models, ...)")
            models.append(load_model(meta.parent, build_from_arch))
        shape = tuple(read_json(found[0])["arch"]["input_shape"])
        return cls.build(models, Path(out or Path(path) / "portfolio"), shape, task, **kwargs)

    def table(self) -> list[dict]:
        return [{**asdict(lv), "size_ratio": lv.size_ratio, "speedup": lv.speedup} for lv in self.levels]


def _artifact(path: Path):
    from edgecompress.export.artifact import Artifact

    return Artifact(Path(path), "onnx", "onnxruntime")


class Server:
    """A small serving loop over a portfolio: all shifted models stay loaded; switching swaps a reference."""

    def __init__(self, portfolio: Portfolio, threads: int = 1):
        self.portfolio, self.threads = portfolio, threads
        self.sessions = {lv.level: self._runner(lv.dense_onnx) for lv in portfolio.levels}
        self.current = portfolio.levels[0].level

    def _runner(self, path: str):
        """An ONNX Runtime session with the same settings every other measurement uses."""
        from edgecompress.export.artifact import Artifact

        return Artifact(Path(path), "onnx", "onnxruntime").runner(self.threads)

    def select(self, latency_ms: float | None = None, memory_mb: float | None = None) -> tuple[int, str]:
        """The most accurate level (ties: fastest) within the budgets; if none fits, the fastest, and say so."""
        def fits(lv: Level) -> bool:
            ok_lat = latency_ms is None or (lv.latency_dense_ms is not None and lv.latency_dense_ms <= latency_ms)
            ok_mem = memory_mb is None or (lv.peak_memory_dense_mb is not None and lv.peak_memory_dense_mb <= memory_mb)
            return ok_lat and ok_mem

        levels = self.portfolio.levels
        fastest = min(levels, key=lambda lv: (lv.latency_dense_ms or float("inf"), lv.bytes_dense))
        candidates = [lv for lv in levels if fits(lv)]
        if not candidates:
            return fastest.level, (f"no level meets the budget (latency {latency_ms} ms, memory {memory_mb} MB); "
                                   f"serving the fastest, level {fastest.level} ({fastest.latency_dense_ms} ms)")
        best = max(candidates, key=lambda lv: (lv.accuracy_dense or 0.0, -(lv.latency_dense_ms or 0.0)))
        return best.level, f"level {best.level} meets the budget ({best.latency_dense_ms} ms, acc {best.accuracy_dense})"

    def switch(self, level: int) -> float:
        """Serve ``level`` from now on; returns the seconds the swap took (in memory)."""
        start = time.perf_counter()
        if level not in self.sessions:
            raise EdgeCompressError(f"no level {level} in the portfolio", fix=f"choose one of {sorted(self.sessions)}")
        self.current = level
        return time.perf_counter() - start

    def switch_first_request(self, level: int, x: np.ndarray) -> float:
        """Seconds to swap to ``level`` and answer one request with it."""
        start = time.perf_counter()
        self.switch(level)
        self(x)
        return time.perf_counter() - start

    def reload_first_request(self, level: int, x: np.ndarray) -> float:
        """Seconds to load ``level`` from disk into a new session and answer one request (the alternative)."""
        start = time.perf_counter()
        self._runner(self.portfolio.levels[level].dense_onnx)(x)
        return time.perf_counter() - start

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.sessions[self.current](x)
