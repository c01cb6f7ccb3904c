"""What a stage receives besides its model and config, and what it may return."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from edgecompress.errors import EdgeCompressError
from edgecompress.measure.cost import COUNTED, CostMeter
from edgecompress.settings import ExportSettings

if TYPE_CHECKING:
    from torch import nn

    from edgecompress.tasks import Task
    from edgecompress.export.artifact import Artifact


@dataclass
class StageOutput:
    """Returned by a stage that produces the deployable artifact itself (e.g. an INT8 ONNX file).

    ``model`` stays the float PyTorch model (for parameter and MAC counts); ``artifact`` is what ships and
    what the pipeline measures. Stages that only change the model may return the ``nn.Module`` directly.
    """

    model: nn.Module
    artifact: Artifact | None = None


class StageReport(BaseModel):
    """What one stage cost, measured by the pipeline around the stage (the same fields for every stage).

    labels_used / unlabeled_samples: distinct training and validation samples the stage read, counted as
    labelled when the stage's configuration needs labels (``StageConfig.labels_needed``), else as unlabeled.
    """

    model_config = ConfigDict(extra="forbid")
    wall_seconds: float = Field(ge=0)
    cpu_seconds: float = Field(ge=0, description="CPU time of all threads of the process")
    device: str = Field("cpu", description="where the compression work ran")
    flops_forward: int = Field(ge=0, description="Conv/Linear FLOPs of PyTorch forward passes")
    flops_backward: int = Field(ge=0, description="estimated: 2x the forward FLOPs of each backward pass")
    flops_solve: int = Field(ge=0, description="linear-algebra FLOPs the stage reported (solves, Hessians)")
    labels_used: int = Field(ge=0)
    unlabeled_samples: int = Field(ge=0)
    counted: str = Field(COUNTED, description="what the FLOP count covers")

    @property
    def flops(self) -> int:
        return self.flops_forward + self.flops_backward + self.flops_solve

    @classmethod
    def of(cls, meter: CostMeter, ctx: StageContext | None, used: dict[str, int], labelled: bool,
           device: torch.device | None = None) -> StageReport:
        """The report of a stage from its meter, its context and the samples it read (``Task.reset_usage``);
        ``device``: where the work ran (default: the context's device, the CPU without a context)."""
        samples = used.get("train", 0) + used.get("val", 0)
        device = device or (ctx.device if ctx else torch.device("cpu"))
        return cls(wall_seconds=round(meter.wall, 6), cpu_seconds=round(meter.cpu, 6), device=str(device),
                   flops_forward=meter.forward, flops_backward=meter.backward,
                   flops_solve=ctx.solve_flops if ctx else 0,
                   labels_used=samples if labelled else 0, unlabeled_samples=0 if labelled else samples)


class StageMeter:
    """Measures a stage as the pipeline does: a ``CostMeter`` around it and the task samples it read.

    ``with StageMeter(task) as meter: ...`` then ``meter.report(ctx, labelled)``."""

    def __init__(self, task: Task | None):
        self.task, self.cost, self.used = task, CostMeter(), {}

    def __enter__(self) -> StageMeter:
        if self.task is not None:
            self.task.reset_usage()
        self.cost.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cost.__exit__(*exc)
        self.used = self.task.reset_usage() if self.task is not None else {}

    def report(self, ctx: StageContext | None, labelled: bool, device: torch.device | None = None) -> StageReport:
        return StageReport.of(self.cost, ctx, self.used, labelled, device)


@dataclass
class StageContext:
    """Everything a stage may need beyond the model and its config.

    task: data loaders and metrics (None when a stage is applied to a bare model).
    teacher: the model as it entered the recipe (the distillation teacher / dense reference), frozen.
    seed: the stage's own seed (recipe seed + stage index), so a resumed run repeats an uninterrupted one.
    workdir: a directory the stage may write artifacts into (the pipeline gives each stage its own).
    export: export/runtime settings from the recipe (format, runtime, threads, batch, opset).
    info: details the stage wants in the report (tables, per-step histories): JSON-serialisable values.
    progress: show progress bars.
    solve_flops: linear-algebra FLOPs outside PyTorch layers (least squares, Hessians), added by the stage
    through ``add_solve_flops``; everything else in its :class:`StageReport` the pipeline measures itself.
    device: where the stage's work runs; the pipeline has put the model and the teacher there (a stage registered
    for the CPU only always gets the CPU). Stages follow the model's device, so ``apply`` works on any device.
    """

    task: Task | None = None
    teacher: nn.Module | None = None
    seed: int = 0
    workdir: Path | None = None
    export: ExportSettings = field(default_factory=ExportSettings)
    info: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    solve_flops: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def add_solve_flops(self, flops: int) -> None:
        self.solve_flops += int(flops)

    def require_task(self, stage: str) -> Task:
        if self.task is None:
            raise EdgeCompressError(
                f"stage {stage!r} needs data (a task) but none was given",
                fix="pass task=... to edgecompress.apply/compress, or add a `data:` section to the recipe",
            )
        return self.task

    def require_teacher(self, stage: str) -> nn.Module:
        if self.teacher is None:
            raise EdgeCompressError(
                f"stage {stage!r} needs a teacher model but none was given",
                fix="pass teacher=... to edgecompress.apply, or run the stage inside a recipe",
            )
        return self.teacher

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return self.require_task("example_inputs").example_inputs(batch)

    def scratch_dir(self) -> Path:
        """The stage's workdir, or a fresh temporary directory when there is none."""
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="edgecompress-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self.workdir
