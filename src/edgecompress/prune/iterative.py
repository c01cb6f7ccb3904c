"""``prune.iterative``: the conventional iterative structured-pruning pipeline (prune a step, fine-tune, repeat).

The step loop :func:`run_steps` is shared with ``prune.ice``, which changes its behaviour through a
:class:`StepPolicy` (when to fine-tune, at which learning rate, which layers stay frozen).
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from edgecompress.context import StageContext
from edgecompress.tasks import Task
from edgecompress.measure.counts import count_macs, count_params
from edgecompress.prune import align
from edgecompress.prune.analysis import ratio_or_macs_target
from edgecompress.prune.steps import Plan, find_groups, make_plan, prune_group, ratio_for_macs
from edgecompress.registry import CPU_AND_CUDA, register
from edgecompress.train import accuracy, train

STAGE = "prune.iterative"


class IterativeConfig(align.AlignedConfig):
    """Settings of ``prune.iterative``: the target, how it is split into steps, and the fine-tuning per step."""

    target_ratio: float | None = Field(
        None, gt=0.0, le=0.95,
        description="fraction of every prunable group's output channels removed in the end (default 0.5 when "
                    "target_macs_ratio is not given); a group never loses its last channel")
    target_macs_ratio: float | None = Field(
        None, gt=0.0, lt=1.0, description="instead of target_ratio: the final MACs as a fraction of the original")
    mode: Literal["block", "uniform"] = Field(
        "block", description="block: one dependency group (a layer's channels and what is coupled to them) after "
                             "another in network order; uniform: an equal share of every group per step")
    steps: int | None = Field(
        None, ge=1, le=500,
        description="pruning steps; block: groups are split into this many consecutive chunks (default one group "
                    "per step); uniform: default 6")
    ignored_layers: list[str] = Field([], description="module names or globs whose output channels stay")
    epochs_per_step: int = Field(1, ge=1, le=100, description="fine-tuning epochs after each step")
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="fine-tuning learning rate (constant)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0, description="SGD weight decay")
    batch_size: int = Field(64, ge=1, le=65536, description="fine-tuning batch size")
    temperature: float = Field(2.0, gt=0.0, le=100.0, description="distillation temperature (loss = CE + KL)")
    max_batches: int | None = Field(None, ge=1, description="cap on the batches of one fine-tuning epoch")

    @model_validator(mode="before")
    @classmethod
    def _one_target(cls, data):
        return ratio_or_macs_target(data, "target_ratio")

    def labels_needed(self) -> str | None:
        return "it fine-tunes with the task's loss and judges steps by validation accuracy"


class StepPolicy:
    """The conventional pipeline's choices in the step loop: fine-tune after every step at the fixed lr."""

    def __init__(self, lr: float):
        self.lr = lr

    def after_prune(self, model: nn.Module) -> list[str]:
        """Called after each pruning step (parameters were replaced); returns the frozen layers' names."""
        return []

    def should_finetune(self, model: nn.Module) -> tuple[bool, float | None]:
        """Whether to fine-tune now, and the validation accuracy measured to decide (None: not measured)."""
        return True, None

    def learning_rate(self, model: nn.Module) -> float:
        return self.lr


@dataclass
class Setup:
    """What one pipeline run works on: the model being pruned, its plan, the data and the teacher."""

    model: nn.Module
    plan: Plan
    task: Task
    teacher: nn.Module
    example: torch.Tensor
    ratio: float


def resolve_ratio(model: nn.Module, task: Task, config: IterativeConfig, where: str) -> float:
    """The final channel ratio: ``target_ratio``, or the smallest one that meets ``target_macs_ratio`` (with
    ``round_to`` already resolved to a number, see :func:`aligned`)."""
    if config.target_macs_ratio is None:
        return config.target_ratio
    example = task.example_inputs(1).to(next(model.parameters()).device)
    return ratio_for_macs(model, example, config.ignored_layers, config.target_macs_ratio, where,
                          multiple=channel_multiple(config))


def channel_multiple(config: IterativeConfig) -> int:
    """``round_to`` as a number (``auto`` not resolved by :func:`aligned`: ONNX Runtime's multiple on this CPU)."""
    return config.round_to if isinstance(config.round_to, int) else align.resolve("auto", "onnxruntime", STAGE)


def aligned(config: IterativeConfig, ctx: StageContext, where: str) -> IterativeConfig:
    """``config`` with ``round_to: auto`` resolved to the export runtime's channel multiple on this CPU."""
    return config.model_copy(update={"round_to": align.resolve(config.round_to, ctx.export.runtime,
                                                               f"{where}.round_to")})


def prepare(model: nn.Module, task: Task, teacher: nn.Module | None, config: IterativeConfig, where: str,
            ratio: float | None = None) -> Setup:
    """Copy ``model``, trace its groups and plan the steps; ``ratio`` skips resolving a MACs target again."""
    if ratio is None:
        ratio = resolve_ratio(model, task, config, where)
    model = copy.deepcopy(model).eval()
    example = task.example_inputs(1).to(next(model.parameters()).device)
    graph, groups = find_groups(model, example, config.ignored_layers, where)
    plan = make_plan(graph, groups, ratio, config.mode, config.steps, channel_multiple(config))
    if plan.clamped:
        warnings.warn(f"{where}: ratio {ratio:.3f} would remove every channel of {', '.join(plan.clamped)}; "
                      "each keeps one channel instead", stacklevel=2)
    teacher = copy.deepcopy(model if teacher is None else teacher).eval().requires_grad_(False)  # caller's untouched
    return Setup(model, plan, task, teacher, example, ratio)


def finetune_step(setup: Setup, config: IterativeConfig, lr: float, seed: int, progress: bool, label: str) -> float:
    """Fine-tune in place for ``epochs_per_step`` epochs with CE + KL(T) against the teacher (the authors'
    loss: no T^2 factor) and a constant ``lr``; returns the validation accuracy after it.

    Deviation: SGD here uses Nesterov momentum (the shared training loop's choice); the authors' code uses
    plain momentum."""
    history = train(setup.model, setup.task, epochs=config.epochs_per_step, lr=lr, momentum=config.momentum,
                    weight_decay=config.weight_decay, batch_size=config.batch_size, schedule="constant",
                    teacher=setup.teacher, temperature=config.temperature,
                    loss_weights=(1.0, 1.0 / config.temperature**2), seed=seed, progress=progress,
                    description=label, max_batches=config.max_batches)
    return history[-1]["val_accuracy"]


def run_steps(setup: Setup, config: IterativeConfig, policy: StepPolicy, *, seed: int, progress: bool,
              measure_macs: bool = True) -> dict:
    """The step loop: prune one step of the plan, let ``policy`` decide on fine-tuning, record the step."""
    macs0 = count_macs(setup.model, setup.example) if measure_macs else None
    steps, epochs = [], 0
    for index, step in enumerate(setup.plan.steps, start=1):
        start = time.perf_counter()
        for group_index, keep in step:
            prune_group(setup.plan.graph, setup.plan.groups[group_index], keep)
        frozen = policy.after_prune(setup.model)
        tune, before = policy.should_finetune(setup.model)
        lr = policy.learning_rate(setup.model) if tune else None
        acc = finetune_step(setup, config, lr, seed + index, progress, f"step {index}") if tune else before
        epochs += config.epochs_per_step if tune else 0
        steps.append({
            "step": index, "groups": [setup.plan.groups[i].name for i, _ in step],
            "channel_ratio": round(setup.plan.channel_ratio(), 4),
            "macs_ratio": round(count_macs(setup.model, setup.example) / macs0, 4) if measure_macs else None,
            "accuracy_before_finetune": before, "finetuned": tune, "accuracy": acc, "lr": lr,
            "frozen_layers": len(frozen), "seconds": round(time.perf_counter() - start, 3),
        })
    final = steps[-1]["accuracy"] if steps else None
    return {"steps": steps, "finetune_epochs": epochs, "finetuned_steps": sum(s["finetuned"] for s in steps),
            "skipped_finetunes": sum(not s["finetuned"] for s in steps),
            "final_accuracy": final if final is not None else accuracy(setup.model, setup.task, "val")}


def summarise(setup: Setup, original: nn.Module, loop: dict, wall: float, cpu: float) -> dict:
    """Totals of one run for ``ctx.info`` (JSON-serialisable)."""
    return {
        "target_channel_ratio": setup.ratio, "channel_ratio": round(setup.plan.channel_ratio(), 4),
        "clamped_groups": setup.plan.clamped, "params_before": count_params(original),
        "params_after": count_params(setup.model), "macs_before": count_macs(original, setup.example),
        "macs_after": count_macs(setup.model, setup.example), **loop,
        "seconds": round(wall, 3), "cpu_seconds": round(cpu, 3), "round_to": setup.plan.multiple,
    }


@register(STAGE, IterativeConfig, devices=CPU_AND_CUDA)
def prune_iterative(model: nn.Module, config: IterativeConfig, ctx: StageContext) -> nn.Module:
    """Conventional iterative structured pruning: prune a step, fine-tune (CE + KD, T=2), repeat to the target.

    Steps are torch-pruning dependency groups in network order (``mode: block``) or an equal share of
    every group (``mode: uniform``); channels with the smallest L1 norm go. After every step the model is
    fine-tuned against the unpruned model (``ctx.teacher``, else the incoming model) with SGD at a constant lr.
    """
    task = ctx.require_task(STAGE)
    wall, cpu = time.perf_counter(), time.process_time()
    config = aligned(config, ctx, STAGE)
    setup = prepare(model, task, ctx.teacher, config, STAGE)
    loop = run_steps(setup, config, StepPolicy(config.lr), seed=ctx.seed, progress=ctx.progress)
    ctx.info.update(summarise(setup, model, loop, time.perf_counter() - wall, time.process_time() - cpu))
    return setup.model.train(model.training)
