"""``finetune``: recover accuracy after compression by training on the task, optionally distilling from the
model as it entered the recipe (the teacher)."""

from __future__ import annotations

import copy

import torch.nn.utils.prune as tprune
from pydantic import Field
from torch import nn

from edgecompress.context import StageContext
from edgecompress.measure import count_macs
from edgecompress.recover.flops import forward_flops, training_flops
from edgecompress.registry import CPU_AND_CUDA, register
from edgecompress.train import DistillConfig, TrainSettings, accuracy, mask_zeros, train


class FinetuneConfig(TrainSettings):
    """Settings of ``finetune``."""

    epochs: int = Field(3, ge=1, le=10000, description="passes over the training split")
    lr: float = Field(0.01, gt=0.0, le=10.0, description="initial learning rate (cosine-annealed to zero)")
    keep_zeros: bool = Field(True, description="Conv/Linear weights that are exactly zero (unstructured pruning) "
                                               "stay zero: they are masked during training")
    distill: DistillConfig | None = Field(None, description="also match the teacher's soft targets "
                                                             "(the model as it entered the recipe)")

    def labels_needed(self) -> str | None:
        if self.distill is None or self.distill.alpha < 1:
            return "it trains on the task's loss; with `distill: {alpha: 1.0}` it learns the teacher's outputs alone"
        return None


@register("finetune", FinetuneConfig, devices=CPU_AND_CUDA)
def finetune(model: nn.Module, config: FinetuneConfig, ctx: StageContext) -> nn.Module:
    """Fine-tune on the task's training data (SGD/AdamW, cosine schedule), optionally with distillation.

    Pruning masks and zeroed weights are kept (``keep_zeros``). Reports validation accuracy before and
    after and the per-epoch history.
    """
    task = ctx.require_task("finetune")
    teacher = ctx.require_teacher("finetune") if config.distill is not None else None
    model = copy.deepcopy(model)
    masked = mask_zeros(model) if config.keep_zeros else []
    before = accuracy(model, task, "val") if task.has_labels else None
    distill = config.distill or DistillConfig()
    history = train(
        model, task, epochs=config.epochs, lr=config.lr, optimizer=config.optimizer, batch_size=config.batch_size,
        weight_decay=config.weight_decay, teacher=teacher, temperature=distill.temperature, alpha=distill.alpha,
        seed=ctx.seed, progress=ctx.progress, description="finetune",
    )
    for m in masked:
        tprune.remove(m, "weight")
    names = {m: n for n, m in model.named_modules()}
    # recovery cost (issue 6): training (+ teacher forward passes); the per-epoch validation is not counted
    samples, example = len(task.train), task.example_inputs().to(next(model.parameters()).device)
    flops = training_flops(count_macs(model, example), samples, config.epochs)
    if teacher is not None:
        flops += forward_flops(count_macs(teacher, example), samples * config.epochs)
    ctx.info.update({
        "recovery_flops": flops,
        "labels_used": samples, "samples_used": samples,
        "val_accuracy_before": before, "val_accuracy_after": history[-1]["val_accuracy"], "history": history,
        "distilled": teacher is not None, "zeros_kept_in": [names[m] for m in masked],
    })
    return model
