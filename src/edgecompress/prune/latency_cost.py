"""Latency as the cost that structured pruning budgets: what removing channels or blocks saves in the runtime.

MACs are a poor proxy for latency on a CPU: a layer's time also has parts that scale with its channels, not with
channels squared (activation copies, layout reorders, elementwise work), parts that do not scale at all
(per-operator dispatch), and steps where the channel count leaves or rejoins the runtime's vector blocks. So
each sensitivity curve is credited with the latency its pruning saves, predicted from a table of unit latencies
measured in ONNX Runtime on this machine at the export's thread count and batch
(:class:`edgecompress.measure.latency_model.LatencyTable`: every block timed alone, once per distinct shape), and
the budget is checked on the whole pruned model, exported and timed side by side with the original (interleaved
rounds, the median run of each burst: on a loaded machine the fastest run favours the shorter model, which
slips between other processes' time slices more often). The table ranks cheaply but is biased: a block timed alone pays layout
conversions at its edges that it does not pay inside the network, so the whole-model check is what decides
whether the target is met.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.measure.latency_model import RUNTIMES, LatencyTable, time_onnx
from edgecompress.prune import sensitivity
from edgecompress.runtimes.onnxruntime import export_onnx


class LatencyCost:
    """Latency of pruned variants of ``reference`` relative to it: measured (:meth:`__call__`) and predicted per
    group from one table of unit latencies (:meth:`rescore`)."""

    def __init__(self, reference: nn.Module, runtime: str, threads: int, batch: int, input_shape: tuple[int, ...],
                 where: str, rounds: int = 5, seconds: float = 0.3):
        if runtime not in RUNTIMES:
            raise EdgeCompressError(f"a latency target is measured in {', '.join(RUNTIMES)}, not in {runtime}",
                                    where=where, fix="set export.runtime: onnxruntime for this run, or use "
                                                     "target_macs_ratio")
        self.table = LatencyTable(threads=threads, runtime=runtime, batch=batch)
        self.input_shape, self.threads, self.batch = input_shape, threads, batch
        self.rounds, self.measured = rounds, 0
        self._dir = tempfile.TemporaryDirectory(prefix="edgecompress-latency-")
        self._reference = self._export(reference)
        once = time_onnx([self._reference], [input_shape], threads, rounds=1, repeats=3, warmup=1, batch=batch)[0]
        self.repeats = min(20, max(3, round(seconds * 1e3 / once)))  # runs per burst: ~seconds per burst

    def _export(self, model: nn.Module) -> Path:
        path = Path(self._dir.name) / f"m{self.measured}.onnx"
        self.measured += 1
        return export_onnx(model, torch.zeros(1, *self.input_shape), path).path

    def __call__(self, model: nn.Module) -> float:
        """``model``'s latency over the reference's, both timed side by side now."""
        ref, ms = time_onnx([self._reference, self._export(model)], [self.input_shape] * 2, self.threads,
                            rounds=self.rounds, repeats=self.repeats, warmup=3, batch=self.batch,
                            statistic=statistics.median)
        return ms / ref

    def rescore(self, model: nn.Module, example: torch.Tensor, allocation: sensitivity.Allocation) -> None:
        """Replace each curve's estimated MAC savings by the predicted latency saved when only that group is pruned
        at that ratio (ms; negative where the pruned layers run slower). A group's variants are timed together."""
        base = self.table.raw(model, self.input_shape)
        for curve in allocation.curves:
            variants = [sensitivity.apply(model, example, allocation, {curve.name: r}) for r in curve.ratios[1:]]
            self.table.prepare(variants, self.input_shape, rounds=3, repeats=self.repeats)
            curve.saved = [0.0, *(base - self.table.raw(v, self.input_shape) for v in variants)]
