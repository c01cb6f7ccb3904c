"""Recovery by distillation after a rewrite (``factorize.lowrank``, ``hw.separable``): the rewritten model trains
towards the model as it entered the stage (soft targets, :func:`edgecompress.train.train`), mixed with the labels."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.train import DistillConfig, TrainSettings, accuracy, train


class RecoverySettings(TrainSettings):
    """Distillation from the model as it entered the stage; ``epochs: 0`` (the default) skips it."""

    epochs: int = Field(0, ge=0, le=10_000, description="passes over the training split (0: no recovery)")
    lr: float = Field(0.01, gt=0.0, le=10.0, description="initial learning rate (cosine-annealed to zero)")
    distill: DistillConfig = Field(DistillConfig(), description="soft-target temperature and weight (alpha)")

    def labels_needed(self) -> str | None:
        if self.epochs and self.distill.alpha < 1:
            return "recovery has a cross-entropy term; `distill: {alpha: 1.0}` learns the teacher's outputs alone"
        return None


def recover(model: nn.Module, original: nn.Module, settings: RecoverySettings, ctx: StageContext, stage: str) -> dict:
    """Train ``model`` in place towards ``original`` (left as it is: train() reads its outputs without gradients and
    restores its mode) on the task; returns what the report shows."""
    if not settings.epochs:
        return {"recovery": None}
    task = ctx.require_task(stage)
    if task.kind != "classification":
        raise EdgeCompressError(f"recovery trains on classification data, not on {task.kind} data",
                                where=f"{stage}.recovery.epochs", fix="set recovery.epochs to 0")
    before = accuracy(model, task, "val") if task.has_labels else None
    history = train(model, task, epochs=settings.epochs, lr=settings.lr, optimizer=settings.optimizer,
                    batch_size=settings.batch_size, weight_decay=settings.weight_decay, teacher=original,
                    temperature=settings.distill.temperature, alpha=settings.distill.alpha, seed=ctx.seed,
                    progress=ctx.progress, description=f"{stage} recovery")
    return {"recovery": {"epochs": settings.epochs, "val_accuracy_before": before,
                         "val_accuracy_after": history[-1]["val_accuracy"], "history": history}}
