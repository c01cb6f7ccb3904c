"""Measure a model and its deployable artifact: task metrics of the artifact in its runtime, parameters, MACs,
bytes on disk, latency, throughput, peak memory and energy per sample."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgecompress.measure.counts import count_macs, count_nonzero, count_params, layer_table
from edgecompress.measure.energy import energy_per_sample
from edgecompress.measure.latency import benchmark
from edgecompress.settings import ExportSettings

if TYPE_CHECKING:
    from torch import nn

    from edgecompress.runtimes import Artifact
    from edgecompress.tasks import Task

__all__ = ["benchmark", "count_macs", "count_nonzero", "count_params", "energy_per_sample", "layer_table", "measure",
           "measure_artifact"]


def measure(model: nn.Module, artifact: Artifact, task: Task, settings: ExportSettings, *,
            skip_latency: bool = False) -> dict[str, Any]:
    """All metrics of one compression result as one flat, JSON-serialisable dict.

    task metrics (accuracy / f1_macro; on unlabeled data agreement_top1 / top5_overlap / output_cosine with the
    original model): the ARTIFACT run in its runtime on the test split (left out when the task cannot judge). params / nonzero_params / macs: the PyTorch ``model`` on one sample. size_bytes: every artifact
    file. latency_p50_ms, latency_p95_ms, latency_mean_ms, throughput_sps, peak_memory_mb: ``benchmark`` with
    the settings' threads, batch, warmup and repeats (left out with ``skip_latency``). energy_mj /
    energy_source: RAPL when the benchmark could read it, else the labelled op-energy estimate.
    """
    result: dict[str, Any] = {}
    if task.can_evaluate:
        result.update(task.evaluate(artifact.runner(settings.threads), "test"))
    macs = count_macs(model, task.example_inputs(1))
    result.update(params=count_params(model), nonzero_params=count_nonzero(model), macs=macs,
                  size_bytes=artifact.size_bytes)
    measured_mj = None
    if not skip_latency:
        bench = benchmark(artifact, task.input_shape, threads=settings.threads, batch=settings.batch,
                          warmup=settings.warmup, repeats=settings.repeats, vocab_size=getattr(task, "vocab_size", None))
        measured_mj = bench.pop("rapl_energy_mj")
        del bench["load_s"]
        result.update(bench)
    result.update(energy_per_sample(macs, artifact.size_bytes, artifact.precision, batch=settings.batch,
                                    measured_mj=measured_mj))
    result.update(precision=artifact.precision, runtime=artifact.runtime, format=artifact.format,
                  threads=settings.threads, batch=settings.batch)
    result.update(artifact.details)  # e.g. how much of an ExecuTorch program XNNPACK runs
    return result


def measure_artifact(artifact: Artifact, task: Task, settings: ExportSettings, *, accuracy: bool = True,
                     throughput_batch: int | None = None) -> dict[str, Any]:
    """Accuracy (if asked and labelled), bytes, latency p50/p95 at ``settings.batch`` and throughput at
    ``throughput_batch`` (default: the same batch) of one artifact: one row of a runtime comparison."""
    row: dict[str, Any] = {"runtime": artifact.runtime, "format": artifact.format, "precision": artifact.precision}
    if accuracy and task.has_labels and task.metric == "accuracy":
        row["accuracy"] = task.evaluate(artifact.runner(settings.threads))["accuracy"]
    elif accuracy and task.can_evaluate:  # e.g. perplexity, embedding cosine: the task's headline metric
        row[task.metric] = task.evaluate(artifact.runner(settings.threads))[task.metric]
    timing = {"threads": settings.threads, "warmup": settings.warmup, "repeats": settings.repeats,
              "vocab_size": getattr(task, "vocab_size", None)}
    latency = benchmark(artifact, task.input_shape, batch=settings.batch, **timing)
    row.update(size_bytes=artifact.size_bytes, latency_p50_ms=latency["latency_p50_ms"],
               latency_p95_ms=latency["latency_p95_ms"], throughput_sps=latency["throughput_sps"])
    if throughput_batch and throughput_batch != settings.batch:
        row["throughput_sps"] = benchmark(artifact, task.input_shape, batch=throughput_batch, **timing)["throughput_sps"]
    return {**row, "throughput_batch": throughput_batch or settings.batch, **artifact.details}
