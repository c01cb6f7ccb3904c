"""``dynamic.early_exit``: exit heads on a classifier backbone, trained, calibrated and deployed so that each input
stops at the first exit confident enough (the ``onnx_exits`` runtime), with the exit distribution, accuracy and
average latency measured in ONNX Runtime on the task's test data against the full network."""

from __future__ import annotations

import copy
import statistics
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from edgecompress.context import StageContext, StageOutput
from edgecompress.dynamic.heads import ExitHeads, all_exit_logits, calibrate, predict, train_heads
from edgecompress.dynamic.split import cut_points, prefix_macs, resolve_points, segments, trace
from edgecompress.errors import EdgeCompressError
from edgecompress.measure.latency import interleaved_calls
from edgecompress.nn.layers import LAYER_TYPES
from edgecompress.nn.rebuild import set_module
from edgecompress.registry import StageConfig, register
from edgecompress.runtimes import get as get_runtime
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.tasks import Task

STAGE = "dynamic.early_exit"


class EarlyExitConfig(StageConfig):
    """Settings of ``dynamic.early_exit``."""

    split_points: list[str] = Field([], description="where exits go: fx node or module names whose output is the only "
                                    "value the rest of the network needs (empty: automatic, spread by MACs)")
    exits: int = Field(2, ge=1, le=16, description="automatic split points: how many, at k/(exits+1) of the MACs")
    head_hidden: int = Field(64, ge=1, le=8192, description="hidden width of each exit head's two-layer classifier")
    head_pool: int = Field(7, ge=1, le=64, description="each head first average-pools its input to this size per side")
    training: Literal["frozen", "joint"] = Field("frozen", description="frozen: only the heads train; joint: the "
                                                 "backbone trains too (its loss plus the exits')")
    epochs: int = Field(8, ge=1, le=10_000, description="passes over the training split")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate")
    batch_size: int = Field(64, ge=1, le=65536, description="training batch size")
    exit_weight: float = Field(1.0, gt=0.0, le=100.0, description="weight of each exit's cross-entropy")
    max_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0, description="calibration: each exit's threshold is the "
                                     "lowest at which the samples leaving there lose at most this accuracy "
                                     "(fraction) against the network as it entered the stage, on validation data")
    thresholds: list[float] | None = Field(None, description="fixed confidence thresholds, one per exit (no "
                                           "calibration); above 1 an exit never fires")
    latency_samples: int = Field(200, ge=1, le=100_000, description="test samples timed one at a time")
    latency_rounds: int = Field(5, ge=1, le=1000, description="interleaved rounds of the early-exit and full model")

    def labels_needed(self) -> str | None:
        return "the exit heads train on labels and the thresholds are calibrated against them"


def choose_points(model: nn.Module, example: torch.Tensor, config: EarlyExitConfig) -> list[str]:
    """The configured split points, or ``exits`` of them spread over the network by MACs (automatic ones only
    where a layer's output is complete: not right after a Conv, Linear or BatchNorm)."""
    gm = trace(model, STAGE)
    if config.split_points:
        return resolve_points(gm, config.split_points, f"{STAGE}.split_points")
    prefix = prefix_macs(model, gm, example)
    total = max(prefix.values())
    modules = dict(model.named_modules())
    usable = [n.name for n in cut_points(gm) if 0 < prefix[n.name] < total  # after an activation, pooling or add
              and not isinstance(modules.get(str(n.target)), (*LAYER_TYPES, nn.modules.batchnorm._NormBase))]
    if not usable:
        raise EdgeCompressError("the backbone has no usable split points: no point between its first and last layer "
                                "where one value carries everything the rest needs", where=STAGE,
                                fix="early exit needs a chain of layers or blocks (e.g. a CNN, ResNet, MobileNet)")
    picks: list[str] = []
    for k in range(1, config.exits + 1):  # nearest to k/(exits+1) of the MACs, deeper than the last pick
        later = [n for n in usable if not picks or prefix[n] > prefix[picks[-1]]]
        if later:  # among nodes after the same layers, the last (after its BatchNorm, activation, pooling)
            picks.append(min(later, key=lambda n: (abs(prefix[n] - total * k / (config.exits + 1)), -usable.index(n))))
    return picks


def _test_in_runtime(artifact, model: nn.Module, task: Task, workdir, config: EarlyExitConfig, ctx) -> dict:
    """Accuracy and exit distribution of the artifact on the test split, and per-sample latency on real test
    inputs against the full network's ONNX file (same runtime, interleaved rounds)."""
    x, y = (t.numpy() for t in task.split("test").tensors)
    task.record("test")
    runner = artifact.runner(ctx.export.threads)
    logits, which = runner.run(x)
    full = export_onnx(model, task.example_inputs(1), workdir / "full.onnx", ctx.export.opset).runner(
        ctx.export.threads)
    full_logits = np.concatenate([full(x[i:i + 256]) for i in range(0, len(x), 256)])
    xs = [x[i:i + 1] for i in range(min(config.latency_samples, len(x)))]
    times = interleaved_calls({"full": lambda: [full(s) for s in xs], "early_exit": lambda: [runner(s) for s in xs]},
                        config.latency_rounds)
    ratios = [f / e for f, e in zip(times["full"], times["early_exit"], strict=True)]
    counts = np.bincount(which, minlength=len(runner.sessions))
    return {
        "test_accuracy": float((logits.argmax(1) == y).mean()),
        "test_accuracy_full": float((full_logits.argmax(1) == y).mean()),
        "test_exit_share": [round(float(c) / len(y), 4) for c in counts],
        "latency_ms_per_sample": round(statistics.median(times["early_exit"]) * 1e3 / len(xs), 4),
        "latency_ms_per_sample_full": round(statistics.median(times["full"]) * 1e3 / len(xs), 4),
        "speedup": round(statistics.median(ratios), 3),
        "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "timed": f"{len(xs)} test samples one at a time, {config.latency_rounds} interleaved rounds, "
                 f"{ctx.export.threads} thread(s), ONNX Runtime",
    }


@register(STAGE, EarlyExitConfig, produces_artifact=True)
def early_exit(model: nn.Module, config: EarlyExitConfig, ctx: StageContext) -> StageOutput:
    """Early exit: exit heads at chosen or automatic split points, trained (frozen backbone or jointly), with
    per-exit confidence thresholds calibrated on validation data for ``max_accuracy_drop``; deployed as ONNX
    segments that stop each input at its first confident exit (format ``onnx_exits``).

    Reports the split points, the validation and test exit distributions, test accuracy of the deployed artifact
    and of the full network, and their per-sample latency on real test inputs (median speed-up of interleaved
    rounds). Must be the last stage.
    """
    task = ctx.require_task(STAGE)
    model = copy.deepcopy(model).eval().requires_grad_(False)
    example = task.example_inputs(1)
    points = choose_points(model, example, config)
    if config.thresholds is not None and len(config.thresholds) != len(points):
        raise EdgeCompressError(f"{len(config.thresholds)} thresholds for {len(points)} exits ({points})",
                                where=f"{STAGE}.thresholds", fix=f"give {len(points)} values, or leave them out")
    with torch.no_grad():
        shapes, h = [], example
        for part in segments(trace(model, STAGE), points)[:-1]:
            h = part(h)
            shapes.append(list(h.shape[1:]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        heads = ExitHeads(points, shapes, task.num_classes, config.head_hidden, config.head_pool)
    with torch.no_grad():  # the accuracy calibration keeps: the network's before training (joint changes it)
        reference = torch.cat([model(x) for x, _ in task.loader("val", 256)])
    set_module(model, "exit_heads", heads)
    parts = heads.segments(model)
    losses = train_heads(model, parts, task, joint=config.training == "joint", epochs=config.epochs, lr=config.lr,
                         batch_size=config.batch_size, exit_weight=config.exit_weight, seed=ctx.seed)
    heads.eval()
    per_exit, labels = all_exit_logits(parts, task, "val")
    heads.thresholds = config.thresholds or calibrate(per_exit, labels, config.max_accuracy_drop, reference)
    val_logits, val_exit = predict(parts, heads.thresholds, torch.cat([x for x, _ in task.loader("val", 256)]))
    artifact = get_runtime("onnxruntime_exits").export(model, example, ctx.scratch_dir(), ctx.export, "model")
    ctx.info.update({
        "split_points": points, "feature_shapes": shapes, "training": config.training, "loss_per_epoch": losses,
        "thresholds": heads.thresholds,
        "val_exit_accuracy": [round(float((p.argmax(1) == labels).float().mean()), 4) for p in per_exit],
        "val_accuracy": round(float((val_logits.argmax(1) == labels).float().mean()), 4),
        "val_exit_share": [round(float((val_exit == k).float().mean()), 4) for k in range(len(parts))],
        **_test_in_runtime(artifact, model, task, ctx.scratch_dir(), config, ctx),
    })
    return StageOutput(model, artifact)
