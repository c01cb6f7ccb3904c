"""``distill``: train a smaller zoo model (the student) to mimic the incoming model (the teacher)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator
from torch import nn

from edgecompress import zoo
from edgecompress.context import StageContext
from edgecompress.measure.counts import count_params
from edgecompress.registry import CPU_AND_CUDA, register
from edgecompress.train import TrainSettings, accuracy, train


class DistillStageConfig(TrainSettings):
    """Settings of ``distill``: the student architecture and the training run."""

    student: str = Field("mnist_cnn", description="zoo model name of the student (edgecompress.zoo.names())")
    student_kwargs: dict[str, Any] = Field({}, description="builder options of the student, e.g. {width: 0.5}")
    epochs: int = Field(10, ge=1, le=10000, description="passes over the training split")
    lr: float = Field(0.01, gt=0.0, le=10.0, description="initial learning rate (cosine-annealed to zero)")
    temperature: float = Field(4.0, gt=0.0, le=100.0, description="softmax temperature of the soft targets")
    alpha: float = Field(0.7, ge=0.0, le=1.0, description="weight of the soft-target loss (1 - alpha: labels)")

    @field_validator("student")
    @classmethod
    def _known_student(cls, name: str) -> str:
        if name not in zoo.names():
            raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(zoo.names())}")
        return name

    def labels_needed(self) -> str | None:
        return "its loss has a cross-entropy term; alpha: 1.0 trains on the teacher's outputs alone" \
            if self.alpha < 1 else None



@register("distill", DistillStageConfig, devices=CPU_AND_CUDA)
def distill(model: nn.Module, config: DistillStageConfig, ctx: StageContext) -> nn.Module:
    """Knowledge distillation: train a new zoo student on the incoming model's soft targets; returns the student.

    Loss: alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * cross-entropy (Hinton et al.
    2015). The student starts from random weights (seeded by the stage seed); the teacher is not modified.
    """
    task = ctx.require_task("distill")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        student = zoo.build(config.student, task.input_shape, task.num_classes, **config.student_kwargs)
    student.to(next(model.parameters()).device)
    history = train(
        student, task, epochs=config.epochs, lr=config.lr, optimizer=config.optimizer, batch_size=config.batch_size,
        weight_decay=config.weight_decay, teacher=model, temperature=config.temperature, alpha=config.alpha,
        seed=ctx.seed, progress=ctx.progress, description=f"distill -> {config.student}",
    )
    ctx.info.update({
        "student": config.student, "student_kwargs": config.student_kwargs,
        "teacher_params": count_params(model), "student_params": count_params(student),
        "teacher_val_accuracy": accuracy(model, task, "val") if task.has_labels else None,
        "student_val_accuracy": history[-1]["val_accuracy"], "history": history,
    })
    return student
