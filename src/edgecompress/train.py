"""The one training loop every stage reuses: plain supervised training or knowledge distillation.

The module is callable, so that ``edgecompress.train(model, task, ...)`` is :func:`train` whether or not this
module was imported first (importing it sets the package attribute ``train`` to the module).
"""

from __future__ import annotations

import math
import sys
import time
import types
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
import torch.nn.utils.prune
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgecompress import distributed
from edgecompress.errors import EdgeCompressError
from edgecompress.nn.layers import LAYER_TYPES
from edgecompress.registry import StageConfig
from edgecompress.tasks import Task
from edgecompress.ui import progress as progress_bar


class TrainSettings(StageConfig):
    """Settings of :func:`train` shared by the stages that train a model (each adds its epochs and lr)."""

    optimizer: Literal["sgd", "adam"] = Field("sgd", description="sgd (Nesterov momentum 0.9) or adam (AdamW)")
    batch_size: int = Field(64, ge=1, le=65536, description="training batch size")
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0, description="L2 weight decay (decoupled for adam)")


class DistillConfig(StageConfig):
    """Soft targets from the teacher (Hinton et al. 2015), mixed with the hard labels: the distillation
    settings of every stage that trains through :func:`train`."""

    temperature: float = Field(4.0, gt=0.0, le=100.0, description="softmax temperature of the soft targets")
    alpha: float = Field(0.7, ge=0.0, le=1.0, description="weight of the soft-target loss (1 - alpha: labels)")


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
    temperature: float, alpha: float,
) -> torch.Tensor:
    """Hinton et al. (2015): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``.

    The T^2 factor keeps the soft-target gradients on the scale of the hard-target ones. With
    ``labels=None`` only the soft term is used (label-free distillation; ``alpha`` is then ignored).
    """
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean", log_target=True,
    ) * temperature**2
    if labels is None:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def mask_zeros(model: nn.Module) -> list[nn.Module]:
    """Put a torch prune mask on every Conv/Linear weight that has exact zeros (and no mask yet), so training
    keeps them zero; returns the masked modules (``torch.nn.utils.prune.remove`` them afterwards)."""
    masked = []
    for m in model.modules():
        if isinstance(m, LAYER_TYPES) and not hasattr(m, "weight_mask") \
                and bool((m.weight == 0).any()):
            torch.nn.utils.prune.custom_from_mask(m, "weight", mask=(m.weight != 0).to(m.weight.dtype))
            masked.append(m)
    return masked


def _optimizer(params: list[nn.Parameter], name: str, lr: float, momentum: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: use 'sgd' or 'adam'")


@torch.no_grad()
def accuracy(model: nn.Module, task: Task, split: str = "val", batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on a split, in eval mode on the model's device (its mode is restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for x, y in task.loader(split, batch_size=batch_size):
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


@torch.no_grad()
def _teacher_logits(teacher: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The teacher's logits for every training input (on the CPU), computed once on the teacher's device: the
    teacher runs in eval mode on unaugmented data, so its outputs are the same every epoch (this saves a teacher
    forward per batch)."""
    device = next(teacher.parameters()).device
    return torch.cat([teacher(inputs[i : i + batch_size].to(device)).cpu() for i in range(0, len(inputs), batch_size)])


def _loss(model: nn.Module, task: Task, batch: list[torch.Tensor], teacher_logits: torch.Tensor | None,
          temperature: float, alpha: float, loss_weights: tuple[float, float] | None = None) -> torch.Tensor:
    """The task's loss, or with a teacher the distillation loss whose hard term is the task's loss."""
    if teacher_logits is None:
        return task.loss(model, batch)
    logits = model(task.inputs(batch))
    soft = distillation_loss(logits, teacher_logits, None, temperature, alpha)
    if not task.has_labels:
        return soft
    hard_w, soft_w = loss_weights if loss_weights is not None else (1 - alpha, alpha)
    return hard_w * task.output_loss(logits, batch) + soft_w * soft


def train(
    model: nn.Module, task: Task, *, epochs: int, lr: float,
    optimizer: Literal["sgd", "adam"] = "sgd", momentum: float = 0.9, weight_decay: float = 5e-4,
    batch_size: int = 64, schedule: Literal["cosine", "constant"] = "cosine",
    teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.5,
    seed: int = 0, progress: bool = True, description: str = "train", max_batches: int | None = None,
    loss_weights: tuple[float, float] | None = None, on_epoch: Callable[[int], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``task``'s train split; returns one history entry per epoch.

    Only parameters with ``requires_grad`` are optimised. Modules pruned with ``torch.nn.utils.prune``
    keep their masks (training updates ``weight_orig``; the masked ``weight`` stays zero where masked).
    With ``teacher`` the loss is :func:`distillation_loss` against the teacher's logits (teacher in eval
    mode, no gradients, computed once for the whole train split; its mode is restored); ``loss_weights=(hard, soft)`` replaces alpha's weights
    ``(1 - alpha, alpha)`` of the cross-entropy and the T^2-scaled soft term. ``optimizer="adam"`` is AdamW.
    ``schedule="cosine"`` anneals the learning rate per batch to zero. ``max_batches`` caps the batches
    per epoch. ``on_epoch(epoch)`` runs before each epoch (1-based), e.g. to freeze parts of the model.
    The run is deterministic given ``seed`` (the global RNG state is restored afterwards). It runs on the device
    of the model's parameters: batches are moved there; the teacher may be on another device.
    History entries: ``{"epoch", "loss", "val_accuracy", "lr", "seconds"}`` (``val_accuracy``: None
    without labels; ``lr``: at the start of the epoch).
    Under ``torchrun`` (:mod:`edgecompress.distributed`) the model trains in ``DistributedDataParallel``: every
    rank takes its share of each global batch of ``batch_size`` and the gradients are averaged, so the run
    follows one process's (BatchNorm sees each rank's share of the batch; rank 0's running statistics are kept);
    ``loss`` is averaged over the ranks.
    """
    if not task.has_labels and (teacher is None or alpha < 1):
        raise EdgeCompressError(
            f"cannot train on task {task.name!r}: it has no labels",
            fix="use labelled data, or distil from a teacher with alpha: 1.0 (soft targets only)",
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise EdgeCompressError("the model has no trainable parameters (all have requires_grad=False)")
    device = params[0].device
    distributed.check_split(len(task.train), batch_size, description)
    net = distributed.wrap(model)
    was_training, teacher_was_training = model.training, teacher is not None and teacher.training
    history: list[dict] = []
    rng_devices = [device.index] if device.type == "cuda" else []  # a CUDA model's dropout draws from the GPU's RNG
    with torch.random.fork_rng(devices=rng_devices), progress_bar(progress) as bar:
        torch.manual_seed(seed)
        loader = task.loader("train", batch_size=batch_size, shuffle=True, seed=seed)
        if teacher is not None:
            teacher.eval()
            inputs, labels = task.train.tensors
            task.record("train")
            targets = _teacher_logits(teacher, inputs)
            loader = DataLoader(TensorDataset(inputs, labels, targets), batch_size=batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(seed))  # same order as task.loader
        per_epoch = len(loader) if max_batches is None else min(len(loader), max_batches)
        opt = _optimizer(params, optimizer, lr, momentum, weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * per_epoch))
        bar_task = bar.add_task(description, total=epochs * per_epoch)
        try:
            for epoch in range(1, epochs + 1):
                if on_epoch is not None:
                    on_epoch(epoch)
                model.train()
                start, total, seen, epoch_lr = time.perf_counter(), 0.0, 0, opt.param_groups[0]["lr"]
                for step, batch in enumerate(loader):
                    if step >= per_epoch:
                        break
                    part = distributed.local_part(batch)
                    if part is None:  # a last batch too small to share among the ranks
                        continue
                    x, y, *soft = part
                    loss = _loss(net, task, [x.to(device), y.to(device)], soft[0].to(device) if soft else None,
                                 temperature, alpha, loss_weights)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise EdgeCompressError(f"{description}: the loss became {value} in epoch {epoch}",
                                                fix=f"lower the learning rate (now {lr})")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if schedule == "cosine":
                        sched.step()
                    total, seen = total + value * len(x), seen + len(x)
                    bar.update(bar_task, advance=1, status=f"epoch {epoch}/{epochs} loss {total / seen:.4f}")
                total, seen = distributed.sum_count(total), distributed.sum_count(seen)
                acc = accuracy(model, task, "val") if task.has_labels else None
                history.append({"epoch": epoch, "loss": total / max(seen, 1), "val_accuracy": acc,
                                "lr": epoch_lr, "seconds": time.perf_counter() - start})
            distributed.sync_buffers(model)
        finally:
            model.train(was_training)
            if teacher is not None:
                teacher.train(teacher_was_training)
    return history


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs) -> list[dict]:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
