"""Latency as the cost that structured pruning budgets: what removing channels or blocks saves in the runtime.

MACs are a poor proxy for latency on a CPU: a layer's time also has parts that scale with its channels, not with
channels squared (activation copies, layout reorders, elementwise work), parts that do not scale at all
(per-operator dispatch), and steps where the channel count leaves or rejoins the runtime's vector blocks. So
each sensitivity curve is credited with the latency its pruning saves, predicted from a table of unit latencies
measured in ONNX Runtime on this machine at the export's thread count and batch
(:class:`edgecompress.measure.latency_model.LatencyTable`: every block timed alone, once per distinct shape), and
the budget is checked on the whole pruned model, exported and timed side by side with the original in a fresh
worker process on one thread pool, as ``bench`` and the benchmarks time artifacts
(:func:`edgecompress.measure.latency.interleaved`: interleaved rounds, the median run of each burst, the median over
rounds of the per-round ratio), with bursts of about 0.2 s: timed in this process (which holds torch, its threads and
the data) with short bursts, the stage met targets that the deployed model then beat by far, and with a thread pool
per session the smaller model paid for the other's spinning threads (measured:
``benchmarks/results/ort_thread_pools.md``). Now the stage's ratio and the benchmark's agree within 2% on resnet20,
resnet18 and mobilenet_v2. The table ranks cheaply but is biased: a block timed alone pays layout conversions at its
edges that it does not pay inside the network, so the whole-model check is what decides whether the target is met.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.measure.latency import burst_runs, interleaved
from edgecompress.measure.latency_model import RUNTIMES, LatencyTable
from edgecompress.prune import sensitivity
from edgecompress.runtimes import Artifact
from edgecompress.runtimes.onnxruntime import export_onnx


class LatencyCost:
    """Latency of pruned variants of ``reference`` relative to it: measured (:meth:`__call__`) and predicted per
    group from one table of unit latencies (:meth:`rescore`)."""

    def __init__(self, reference: nn.Module, runtime: str, threads: int, batch: int, input_shape: tuple[int, ...],
                 where: str, rounds: int = 7, seconds: float = 0.2):
        if runtime not in RUNTIMES:
            raise EdgeCompressError(f"a latency target is measured in {', '.join(RUNTIMES)}, not in {runtime}",
                                    where=where, fix="set export.runtime: onnxruntime for this run, or use "
                                                     "target_macs_ratio")
        self.table = LatencyTable(threads=threads, runtime=runtime, batch=batch)
        self.input_shape, self.threads, self.batch = input_shape, threads, batch
        self.rounds, self.measured = rounds, 0
        self._dir = tempfile.TemporaryDirectory(prefix="edgecompress-latency-")
        self._reference = self._export(reference)
        self.repeats = burst_runs(self._reference, input_shape, threads=threads, batch=batch, seconds=seconds,
                                  most=500)

    def _export(self, model: nn.Module) -> Artifact:
        path = Path(self._dir.name) / f"m{self.measured}.onnx"
        self.measured += 1
        return export_onnx(model, torch.zeros(1, *self.input_shape), path)

    def __call__(self, model: nn.Module) -> float:
        """``model``'s latency over the reference's: timed side by side now in a worker process, the median over
        rounds of the per-round ratio."""
        ref, ms = interleaved([self._reference, self._export(model)], self.input_shape, threads=self.threads,
                              batch=self.batch, rounds=self.rounds, repeats=self.rounds * self.repeats, warmup=3)
        return statistics.median(m / r for r, m in zip(ref, ms))

    def rescore(self, model: nn.Module, example: torch.Tensor, allocation: sensitivity.Allocation) -> None:
        """Replace each curve's estimated MAC savings by the predicted latency saved when only that group is pruned
        at that ratio (ms; negative where the pruned layers run slower). A group's variants are timed together."""
        base = self.table.raw(model, self.input_shape)
        for curve in allocation.curves:
            variants = [sensitivity.apply(model, example, allocation, {curve.name: r}) for r in curve.ratios[1:]]
            self.table.prepare(variants, self.input_shape, rounds=3, repeats=self.repeats, warmup=2)
            curve.saved = [0.0, *(base - self.table.raw(v, self.input_shape) for v in variants)]
