"""Settings and inputs shared by the label-free recovery stages (``recover.mimic``, ``recover.bias``,
``recover.bn``): unlabeled task inputs, or synthetic inputs from the dense model's BatchNorm statistics."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from edgecompress.calibration import MIN_CALIB_SAMPLES, calibration_samples
from edgecompress.checkpoint import ARCH_ATTR
from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.recover.datafree import synthesize
from edgecompress.registry import StageConfig


class CalibConfig(StageConfig):
    """Where the unlabeled calibration inputs come from and how many there are."""

    calib_samples: int = Field(256, ge=MIN_CALIB_SAMPLES, le=1_000_000, description="calibration inputs (labels are never used)")
    batch_size: int = Field(64, ge=1, le=65536, description="calibration batch size")
    data: Literal["auto", "task", "synthetic"] = Field(
        "auto", description="task: unlabeled training inputs of the task; synthetic: data-free, inputs "
                            "synthesised by inverting the dense model's BatchNorm statistics; auto: task when "
                            "the stage has a task, synthetic otherwise")
    synth_steps: int = Field(50, ge=1, le=10000, description="synthetic data: Adam steps per batch")
    synth_lr: float = Field(0.1, gt=0.0, le=10.0, description="synthetic data: Adam learning rate on the inputs")


def _input_shape(ctx: StageContext, model: nn.Module, where: str) -> tuple[int, ...]:
    if ctx.task is not None:
        return tuple(ctx.task.input_shape)
    arch = getattr(model, ARCH_ATTR, None)
    if arch is None:
        raise EdgeCompressError("data-free calibration needs the input shape, but there is no task and the model "
                                "is not a zoo model", where=where, fix="pass task=... (its data is not needed)")
    return tuple(arch["input_shape"])


def calibration_inputs(config: CalibConfig, ctx: StageContext, dense: nn.Module, where: str
                       ) -> tuple[torch.Tensor, dict]:
    """The calibration inputs, on the device of ``dense``, and a record ``{"data", "samples", "flops", ...}`` of how
    they were obtained. Synthetic inputs invert the BatchNorm statistics of ``dense`` (the model before pruning)."""
    source = config.data
    if source == "auto":
        source = "task" if ctx.task is not None and len(ctx.task.train) > 0 else "synthetic"
    if source == "task":
        x = calibration_samples(ctx, config.calib_samples, where).to(next(dense.parameters()).device)
        return x, {"data": f"task {ctx.task.name} (train split, unlabeled)", "samples": len(x), "flops": 0}
    x, info = synthesize(dense, _input_shape(ctx, dense, where), config.calib_samples, steps=config.synth_steps,
                         lr=config.synth_lr, batch_size=config.batch_size, seed=ctx.seed)
    return x, {"data": "synthetic (BatchNorm statistics inversion, data-free)", "samples": len(x), **info}


def batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [x[i:i + size] for i in range(0, len(x), size)]
