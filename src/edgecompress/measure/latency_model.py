"""Latency model: a per-runtime, per-thread-count lookup table of measured unit latencies that predicts a whole
network's latency without exporting it, so an architecture search ranks candidates cheaply.

A network is cut into *units* (:func:`units`): the children of its ``nn.Sequential`` containers, recursively,
and every other module whole (a searchable block, a pooling layer, the classifier), each with the input shape it
sees. A unit's key is its ``repr`` (every hyper-parameter: channels, kernel, groups, activation) plus that shape;
the table measures each new key once, as a one-unit ONNX model in ONNX Runtime with the run's thread count, and
keeps it (a JSON file when given a path). A unit's own time is its measured time less the fixed cost of one
``session.run`` (an identity model), so the raw prediction is ``overhead + sum(unit - overhead)``; :meth:`fit`
then fits ``a * raw + b`` by least squares to a few whole networks measured end to end, which absorbs what the
units alone do not see (input and output copies and layout reorders at each unit's edges, cache effects). A
per-unit term was tried and fitted the noise: it predicted held-out networks worse. The table is the lookup approach of ProxylessNAS/nn-Meter; it
is hand-written because those tools target other runtimes and model zoos, not ONNX Runtime on this host.

Timing (:func:`time_onnx`): ONNX Runtime sessions in a worker process, on one thread pool
(:func:`edgecompress.runtimes.onnxruntime.share_threads`), all the models of one call timed in interleaved rounds
(one burst of ``repeats`` runs per model per round), the median over the rounds of each burst's fastest run
(``fastest``, the table's and the search's choice: on a shared machine the fastest of a
burst is the run least disturbed by other processes, so it is the statistic that stays put from one call to the
next) or of each burst's median. :meth:`LatencyTable.prepare` times the units of many networks in one call, so
the whole table shares one machine state, up to a memory bound (:data:`CALL_BYTES`): every session of a call holds
its own buffers, and at batch 16 and 224x224 tens of sessions took gigabytes, so larger sets are timed in several
calls.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecompress import atomic
from edgecompress.nn.capture import forward_with_hooks
from edgecompress.measure.latency import interleaved
from edgecompress.runtimes import Artifact
from edgecompress.runtimes.onnxruntime import export_onnx

RUNTIMES = ("onnxruntime",)
CALL_BYTES = 2 << 30  # estimated session memory (weights and activations) of one time_onnx call


def units(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[nn.Module, tuple[int, ...]]]:
    """The units of ``model`` in forward order, each with its input shape (batch 1); see the module docstring."""
    leaves: list[nn.Module] = []

    def walk(module: nn.Module) -> None:
        children = list(module.children())
        if isinstance(module, nn.Sequential) or (children and module is model):
            for child in children:
                walk(child)
        else:
            leaves.append(module)

    walk(model)
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        shapes.setdefault(module, tuple(args[0].shape[1:]))

    hooks = [m.register_forward_pre_hook(record) for m in leaves]
    forward_with_hooks(model.eval(), torch.zeros(1, *input_shape), hooks)
    return [(m, shapes[m]) for m in leaves if m in shapes]


def unit_key(module: nn.Module, shape: tuple[int, ...], batch: int = 1) -> str:
    tail = f"|batch {batch}" if batch != 1 else ""
    return hashlib.sha1(f"{module!r}|{shape}{tail}".encode()).hexdigest()[:16]


def time_onnx(paths: list[Path], shapes: list[tuple[int, ...]], threads: int, rounds: int = 5,
              repeats: int = 40, warmup: int = 10, fastest: bool = True, batch: int = 1) -> list[float]:
    """Latency (ms per batch of ``batch``) of each ONNX file (input ``[batch, *shape]``) in ONNX Runtime, timed in
    interleaved rounds of ``repeats`` runs in a fresh worker process: the median over the rounds of each burst's
    fastest run (its median run without ``fastest``)."""
    artifacts = [Artifact(Path(p), "onnx", "onnxruntime", "fp32") for p in paths]
    per_round = interleaved(artifacts, shapes[0], threads=threads, batch=batch, rounds=rounds,
                            repeats=rounds * repeats, warmup=warmup, shapes=shapes, fastest=fastest)
    return [statistics.median(m) for m in per_round]


def measure_models(models: list[nn.Module], input_shape: tuple[int, ...], threads: int, **timing) -> list[float]:
    """Export each model to ONNX (a temporary folder) and time them together with :func:`time_onnx`."""
    with tempfile.TemporaryDirectory(prefix="edgecompress-latency-") as tmp:
        paths = [export_onnx(m, torch.zeros(1, *input_shape), Path(tmp) / f"m{i}.onnx").path
                 for i, m in enumerate(models)]
        return time_onnx(paths, [tuple(input_shape)] * len(paths), threads, **timing)


class LatencyTable:
    """Measured unit latencies (ms per batch of ``batch``) of one runtime and thread count, and the predictor
    built on them."""

    def __init__(self, threads: int = 1, runtime: str = "onnxruntime", path: Path | None = None, batch: int = 1):
        if runtime not in RUNTIMES:
            raise ValueError(f"no latency table for runtime {runtime!r}: use one of {RUNTIMES}")
        self.threads, self.runtime, self.path, self.batch = threads, runtime, path, batch
        self.entries: dict[str, float] = {}
        self.scale, self.offset = 1.0, 0.0  # measured ~ scale * raw + offset
        if path is not None and path.is_file():
            self.entries = json.loads(path.read_text()).get("entries", {})
        self.measured = 0  # units timed by this object (the rest came from the file)

    def prepare(self, models: list[nn.Module], input_shape: tuple[int, ...], whole: list[nn.Module] = (),
                rounds: int = 7, repeats: int = 30, warmup: int = 10) -> list[float]:
        """Time every unit of ``models`` that the table lacks (and the overhead) and the networks ``whole`` end to
        end, all in one interleaved call (one machine state for all); returns the networks' latencies (ms)."""
        todo: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
        if "overhead" not in self.entries:
            todo["overhead"] = (nn.Sequential(nn.Identity(), nn.Identity()), (1,))
        for model in models:
            for module, shape in units(model, input_shape):
                key = unit_key(module, shape, self.batch)
                if key not in self.entries:
                    todo.setdefault(key, (module, shape))
        if not todo and not whole:
            return []
        with tempfile.TemporaryDirectory(prefix="edgecompress-lut-") as tmp:
            jobs = [*todo.values(), *((m, tuple(input_shape)) for m in whole)]
            paths = [export_onnx(m, torch.zeros(1, *shape), Path(tmp) / f"u{i}.onnx").path
                     for i, (m, shape) in enumerate(jobs)]
            times = []
            for chunk in _chunks([self._bytes(m, shape) for m, shape in jobs]):
                times += time_onnx([paths[i] for i in chunk], [jobs[i][1] for i in chunk], self.threads,
                                   rounds=rounds, repeats=repeats, warmup=warmup, batch=self.batch)
        self.entries.update(zip(todo, times))
        self.measured += len(todo)
        if todo and self.path is not None:
            atomic.write_text(self.path, json.dumps({"runtime": self.runtime, "threads": self.threads,
                                                     "entries": self.entries}))
        return times[len(todo):]

    def _bytes(self, module: nn.Module, shape: tuple[int, ...]) -> int:
        """A session's estimated memory: its weights and every intermediate tensor of one forward at the batch
        size (ONNX Runtime plans buffers for them all), float32."""
        sizes = [math.prod(shape)]
        forward_with_hooks(module.eval(), torch.zeros(1, *shape), [m.register_forward_hook(
            lambda _m, _a, out: sizes.append(out.numel()) if isinstance(out, torch.Tensor) else None)
            for m in module.modules()])
        return 4 * (sum(p.numel() for p in module.parameters()) + self.batch * sum(sizes))

    def raw(self, model: nn.Module, input_shape: tuple[int, ...]) -> float:
        """``overhead + sum(unit - overhead)`` (ms), timing the units the table lacks."""
        keys = [unit_key(m, s, self.batch) for m, s in units(model, input_shape)]
        if "overhead" not in self.entries or any(k not in self.entries for k in keys):
            self.prepare([model], input_shape)
        base = self.entries["overhead"]
        return base + sum(self.entries[k] - base for k in keys)

    def predict(self, model: nn.Module, input_shape: tuple[int, ...]) -> float:
        """Predicted latency (ms per batch): the calibrated :meth:`raw`."""
        return self.scale * self.raw(model, input_shape) + self.offset

    def fit(self, raw: list[float], measured: list[float]) -> None:
        """Least-squares fit of ``measured ~ scale * raw + offset`` (scale only with fewer than 3 networks)."""
        x, y = np.asarray(raw), np.asarray(measured)
        if len(x) >= 3:
            self.scale, self.offset = (float(v) for v in np.polyfit(x, y, 1))
        elif len(x):
            self.scale, self.offset = float((x * y).sum() / (x * x).sum()), 0.0


def _chunks(sizes: list[int], limit: int = CALL_BYTES) -> list[list[int]]:
    """Consecutive indices of ``sizes`` grouped so that each group's sum stays within ``limit`` (one item at least)."""
    chunks: list[list[int]] = []
    total = 0
    for i, size in enumerate(sizes):
        if not chunks or total + size > limit:
            chunks.append([])
            total = 0
        chunks[-1].append(i)
        total += size
    return chunks


def prediction_error(predicted: list[float], measured: list[float], tolerance: float = 0.10) -> dict[str, float]:
    """How well predictions match measurements: the share within ``tolerance`` (relative), the mean and max
    absolute relative error, and Spearman's rank correlation."""
    from scipy.stats import spearmanr

    p, m = np.asarray(predicted), np.asarray(measured)
    rel = np.abs(p - m) / m
    return {"n": len(m), "within": float((rel <= tolerance).mean()), "tolerance": tolerance,
            "mean_abs_rel_error": float(rel.mean()), "max_abs_rel_error": float(rel.max()),
            "spearman": float(spearmanr(p, m).statistic) if len(m) > 2 else float("nan")}
