"""``prune.ice``: ICE-Pruning (Hu, Henderson, Cano, arXiv:2505.07411) — the conventional iterative pipeline of
``prune.iterative`` plus four switchable components that cut its fine-tuning time:

1. ``threshold``: fine-tune only when validation accuracy is at least ``tau`` points below the unpruned
   accuracy A0 (measured once, never updated);
2. ``freeze``: a probe step (prune the first step, fine-tune once on a copy) scores every conv by
   ``| ||W_post||_1 - ||W_pre||_1 | / ||W_orig||_2``; the fraction ``freeze_fraction`` that changed least is
   frozen (conv + its BatchNorm affine parameters) for the whole run, re-applied after every pruning step;
3. ``adapt_lr``: the pruning-aware learning rate :func:`ice_lr` of the remaining non-zero weights;
4. ``search``: an Optuna grid search of the component settings on a small data subset
   (:mod:`edgecompress.prune.ice_search`), its time counted in the stage's time.

Addition (not in the paper or the authors' code), off by default: ``recalibrate_bn`` re-estimates every
BatchNorm's running statistics on a few training batches (forward passes only) after each pruning step, before
the trigger measures accuracy. Removing channels leaves the next BatchNorm's statistics stale; on small models
that alone can drop accuracy to chance (MNIST-5k, ResNet-20 w0.5: one block's conv1 at 50% gives 11% accuracy,
98% after recalibration), so without it the trigger fires after every step.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from edgecompress.context import StageContext
from edgecompress.nn.bn import reestimate_bn
from edgecompress.nn.layers import weight_layers
from edgecompress.tasks import Task
from edgecompress.prune.iterative import (
    IterativeConfig,
    Setup,
    StepPolicy,
    aligned,
    finetune_step,
    prepare,
    resolve_ratio,
    run_steps,
    summarise,
)
from edgecompress.prune.steps import prune_group
from edgecompress.registry import CPU_AND_CUDA, register
from edgecompress.train import accuracy

STAGE = "prune.ice"


def ice_lr(x: float, b: float, delta: float, p: float, beta: float) -> float:
    """ICE's pruning-aware learning rate ``b - delta / (1 + (x / (2(1-p) - x))**beta)``.

    ``x`` is the fraction of non-zero weights left; the rate steps (logistically, steepness ``beta``) from
    ``b - delta`` well below ``x = 1 - p`` to ``b`` above it. At ``x >= 2(1-p)`` the base of the power is
    undefined; the limit ``b`` is returned."""
    edge = 2 * (1 - p)
    if x >= edge:
        return b
    if x <= 0:
        return b - delta
    try:
        return b - delta / (1 + (x / (edge - x)) ** beta)
    except OverflowError:
        return b


class IceConfig(IterativeConfig):
    """Settings of ``prune.ice``: those of ``prune.iterative`` plus ICE's four components."""

    threshold: bool = Field(True, description="fine-tune only when the accuracy drop reaches tau")
    tau: float = Field(1.0, ge=0.0, le=100.0, description="trigger: accuracy drop from A0, in percentage points")
    freeze: bool = Field(True, description="freeze the layers that changed least in a probe step")
    freeze_fraction: float = Field(0.3, ge=0.0, lt=1.0, description="fraction f of conv layers frozen")
    adapt_lr: bool = Field(True, description="pruning-aware learning rate (else the constant lr)")
    lr_base: float = Field(1e-3, gt=0.0, le=10.0, description="b: the rate while few weights are gone")
    lr_p: float = Field(0.15, gt=0.0, lt=0.5, description="p: the rate steps down around x = 1 - p")
    lr_beta: float = Field(50.0, gt=0.0, le=1000.0, description="beta: steepness of the step")
    lr_delta: float = Field(7e-4, ge=0.0, le=10.0, description="delta: size of the step (lr_delta < lr_base)")
    recalibrate_bn: bool = Field(
        False, description="(our addition) re-estimate BatchNorm statistics on a few train batches after each "
                           "pruning step, before the trigger measures accuracy")
    recalibrate_batches: int = Field(8, ge=1, le=10000, description="train batches used by recalibrate_bn")
    search: bool = Field(True, description="grid-search the enabled components' settings on a data subset")
    search_fraction: float = Field(0.02, gt=0.0, le=1.0, description="fraction of train and val used per trial")
    search_min_samples: int = Field(64, ge=8, description="fewest samples per split in the search subset")
    search_objective: Literal["budget", "authors"] = Field(
        "budget", description="budget (our choice): the trial with the least CPU time whose accuracy drop is at "
                              "most search_tolerance, else the smallest drop; authors: t/max(t,drop)+drop/max(t,drop)"
                              " (mixes seconds and points: at small scale it prefers the largest drop)")
    search_tolerance: float = Field(1.0, ge=0.0, le=100.0, description="budget objective: allowed drop, points")
    search_trials: int = Field(6, ge=0, le=216, description="search budget in trials (each one full ICE run)")
    search_timeout_s: float | None = Field(None, gt=0.0, description="stop starting trials after this long")

    @model_validator(mode="after")
    def _check(self):
        if self.lr_delta >= self.lr_base:
            raise ValueError(f"lr_delta ({self.lr_delta}) must be below lr_base ({self.lr_base}): the lr would "
                             "reach zero or below")
        if self.search and self.search_trials < 1:
            raise ValueError("search_trials is 0: the search budget is too small for one trial; give at "
                             "least 1 or set search: false")
        return self


def train_batches(task: Task, count: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """The inputs of the first ``count`` shuffled training batches (``recalibrate_bn`` re-estimates on these)."""
    loader = task.loader("train", batch_size=batch_size, shuffle=True, seed=seed)
    return [task.inputs(batch) for batch in itertools.islice(loader, count)]


def weight_nonzero(model: nn.Module) -> int:
    """Non-zero Conv/Linear weights (x of the learning-rate schedule counts these)."""
    return sum(int(m.weight.count_nonzero()) for m in weight_layers(model).values())


def _convs(setup: Setup) -> dict[str, nn.Module]:
    return {n: m for n, m in setup.model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}


def probe_scores(model: nn.Module, task: Task, teacher: nn.Module | None, config: IceConfig, ratio: float,
                 seed: int, progress: bool) -> dict[str, float]:
    """The probe step on a copy: prune the plan's first step, fine-tune once (lr = lr_base when adapt_lr,
    else lr, as in the authors' code), score each conv ``| ||W_post||_1 - ||W_pre||_1 | / ||W_orig||_2``."""
    probe = prepare(model, task, teacher, config, STAGE, ratio)
    convs = _convs(probe)
    orig = {n: float(m.weight.detach().norm(2)) for n, m in convs.items()}
    for group_index, keep in probe.plan.steps[0]:
        prune_group(probe.plan.graph, probe.plan.groups[group_index], keep)
    pre = {n: float(m.weight.detach().abs().sum()) for n, m in convs.items()}
    finetune_step(probe, config, config.lr_base if config.adapt_lr else config.lr, seed, progress, "probe step")
    return {n: abs(float(m.weight.detach().abs().sum()) - pre[n]) / max(orig[n], 1e-12) for n, m in convs.items()}


class IcePolicy(StepPolicy):
    """ICE's choices in the shared step loop (each component off gives the conventional behaviour)."""

    def __init__(self, setup: Setup, config: IceConfig, frozen: list[str], seed: int = 0):
        super().__init__(config.lr)
        self.seed, self.steps = seed, 0
        self.config, self.setup = config, setup
        self.a0 = accuracy(setup.model, setup.task, "val") if config.threshold else None
        self.nonzero0 = weight_nonzero(setup.model)
        modules = dict(setup.model.named_modules())
        graph = setup.plan.graph
        self.frozen = {name: [modules[name]] + [node.module for node in graph.module2node[modules[name]].outputs
                                                if isinstance(node.module, nn.modules.batchnorm._BatchNorm)]
                       for name in frozen}

    def after_prune(self, model: nn.Module) -> list[str]:
        self.steps += 1
        if self.config.recalibrate_bn:
            reestimate_bn(model, train_batches(self.setup.task, self.config.recalibrate_batches,
                                               self.config.batch_size, self.seed + self.steps))
        for layers in self.frozen.values():  # torch-pruning replaced the parameters: freeze the new ones
            for layer in layers:
                layer.requires_grad_(False)
        return list(self.frozen)

    def should_finetune(self, model: nn.Module) -> tuple[bool, float | None]:
        if self.a0 is None:
            return True, None
        acc = accuracy(model, self.setup.task, "val")
        return (self.a0 - acc) * 100 >= self.config.tau - 1e-9, acc

    def learning_rate(self, model: nn.Module) -> float:
        if not self.config.adapt_lr:
            return self.config.lr
        c = self.config
        return ice_lr(weight_nonzero(model) / self.nonzero0, c.lr_base, c.lr_delta, c.lr_p, c.lr_beta)


def run_ice(model: nn.Module, task: Task, teacher: nn.Module | None, config: IceConfig, *, ratio: float,
            seed: int, progress: bool, measure_macs: bool = True) -> tuple[Setup, dict]:
    """One ICE run without the search (the search's trials call this too): probe, freeze, step loop."""
    frozen, scores, probe_epochs = [], {}, 0
    if config.freeze and config.freeze_fraction > 0:
        scores = probe_scores(model, task, teacher, config, ratio, seed, progress)
        frozen = sorted(scores, key=scores.get)[: math.ceil(config.freeze_fraction * len(scores))]
        probe_epochs = config.epochs_per_step
    setup = prepare(model, task, teacher, config, STAGE, ratio)
    policy = IcePolicy(setup, config, frozen, seed)
    loop = run_steps(setup, config, policy, seed=seed, progress=progress, measure_macs=measure_macs)
    loop["finetune_epochs"] += probe_epochs
    loop.update({"probe_epochs": probe_epochs, "frozen_layers": frozen, "probe_scores": scores,
                 "unpruned_accuracy": policy.a0})
    return setup, loop


@register(STAGE, IceConfig, devices=CPU_AND_CUDA)
def prune_ice(model: nn.Module, config: IceConfig, ctx: StageContext) -> nn.Module:
    """ICE-Pruning: iterative structured pruning with a fine-tune trigger, layer freezing, a pruning-aware lr
    and a hyperparameter search (each switchable), so far fewer fine-tuning epochs are spent.

    The same steps and fine-tuning as ``prune.iterative``; the search's wall time is part of the stage's
    time and is reported as ``search_seconds``.
    """
    from edgecompress.prune.ice_search import search_settings

    task = ctx.require_task(STAGE)
    wall, cpu = time.perf_counter(), time.process_time()
    config = aligned(config, ctx, STAGE)
    ratio = resolve_ratio(model, task, config, STAGE)
    search = {"seconds": 0.0}
    if config.search:
        best, search = search_settings(model, task, ctx.teacher, config, ratio=ratio, seed=ctx.seed)
        config = config.model_copy(update=best)
    setup, loop = run_ice(copy.deepcopy(model), task, ctx.teacher, config, ratio=ratio, seed=ctx.seed,
                          progress=ctx.progress)
    ctx.info.update(summarise(setup, model, loop, time.perf_counter() - wall, time.process_time() - cpu))
    ctx.info.update({
        "components": {k: getattr(config, k) for k in ("threshold", "freeze", "adapt_lr", "search", "recalibrate_bn")},
        "settings": {k: getattr(config, k) for k in ("tau", "freeze_fraction", "lr_base", "lr_p", "lr_beta",
                                                     "lr_delta")},
        "search": search, "search_seconds": search["seconds"],
    })
    return setup.model.train(model.training)
