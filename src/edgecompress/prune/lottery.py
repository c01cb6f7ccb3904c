"""``prune.lottery``: iterative magnitude pruning with weight rewinding (lottery tickets; Frankle et al. 2019,
rewinding as in Frankle et al. 2020), the sparse portfolio of DNNShifter (methods.md §4.1)."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.utils.prune as tprune
from pydantic import Field
from torch import nn

from edgecompress.checkpoint import save_model
from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.nn.bn import layer_bn_pairs
from edgecompress.nn.layers import build_graph
from edgecompress.prune.magnitude import _target_layers
from edgecompress.registry import CPU_AND_CUDA, StageConfig, register
from edgecompress.train import accuracy, train

STAGE = "prune.lottery"


class LotteryConfig(StageConfig):
    """Settings of ``prune.lottery``: ``levels`` rounds of prune ``rate`` of the remaining weights -> rewind -> retrain."""

    levels: int = Field(5, ge=1, le=40, description="pruning levels after the dense level 0 (0.8^5 = 33% left)")
    rate: float = Field(0.2, gt=0.0, lt=1.0, description="fraction of the REMAINING prunable weights removed per "
                                                         "level, ranked globally by |w| (classifier excluded)")
    epochs: int = Field(2, ge=1, le=1000, description="training epochs of the dense level 0 and of every level")
    rewind_batches: int = Field(20, ge=0, le=100000,
                                description="weights are rewound to the model after this many training batches "
                                            "(0: to the incoming weights)")
    lr: float = Field(0.05, gt=0.0, le=10.0, description="learning rate (SGD, cosine within each level)")
    batch_size: int = Field(64, ge=1, le=65536, description="training batch size")
    zero_dead_bn: bool = Field(
        False, description="our knob (not in the published method): when a conv filter is fully pruned, also "
                           "prune the gamma/beta of the BatchNorm after it, so the filter outputs exactly zero "
                           "and prune.shifter can always remove it (otherwise its constant bias lives on)")

    def labels_needed(self) -> str | None:
        return "it trains every level with the task's loss"



def _global_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor], rate: float) -> dict[str, torch.Tensor]:
    """Extend ``masks`` by removing the ``rate`` fraction of the still-unmasked weights with the smallest |w|."""
    alive = torch.cat([m.weight.detach().abs()[masks[n].bool()] for n, m in layers.items()])
    k = round(rate * alive.numel())
    if k == 0:
        return masks
    threshold = torch.kthvalue(alive, k).values
    return {n: masks[n] * (m.weight.detach().abs() > threshold).to(masks[n].dtype) for n, m in layers.items()}


def _dead_filters(masks: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {n: torch.nonzero(m.flatten(1).sum(1) == 0).flatten().tolist() for n, m in masks.items()}


def _apply_masks(model: nn.Module, masks: dict[str, torch.Tensor], dead_bn: dict[nn.Module, list[int]]) -> list:
    """Put the weight masks (and, with zero_dead_bn, the BN masks) on a fresh copy; returns (module, name) pairs."""
    modules = dict(model.named_modules())
    applied = []
    for name, mask in masks.items():
        tprune.custom_from_mask(modules[name], "weight", mask)
        applied.append((modules[name], "weight"))
    for bn, channels in dead_bn.items():
        keep = torch.ones(bn.num_features, device=bn.weight.device)
        keep[channels] = 0
        for param in ("weight", "bias"):
            tprune.custom_from_mask(bn, param, keep)
            applied.append((bn, param))
    return applied


def sparsity(model: nn.Module, exclude_classifier: bool = True) -> float:
    """Fraction of zeros among the prunable weights (classifier excluded)."""
    layers = _target_layers(model, exclude_classifier)
    return sum(int((m.weight == 0).sum()) for m in layers.values()) / max(1, sum(m.weight.numel() for m in layers.values()))


@register(STAGE, LotteryConfig, devices=CPU_AND_CUDA)
def prune_lottery(model: nn.Module, config: LotteryConfig, ctx: StageContext) -> nn.Module:
    """Lottery-ticket portfolio: global magnitude pruning per level, rewind to an early iterate, retrain.

    Every level's model (level 0 = dense, trained the same way) is saved as a checkpoint in the stage's
    workdir (``level_<i>/model.safetensors``); ``ctx.info['levels']`` lists accuracy, sparsity, all-zero
    filters and path per level (``edgecompress portfolio`` turns them into dense-smaller ONNX models). Returns
    the last level. The rewind point is the model after ``rewind_batches`` batches at constant lr.
    """
    task = ctx.require_task(STAGE)
    start = time.perf_counter()
    work = Path(ctx.scratch_dir())
    rewind = copy.deepcopy(model)
    if config.rewind_batches:
        train(rewind, task, epochs=1, lr=config.lr, batch_size=config.batch_size, schedule="constant",
              max_batches=config.rewind_batches, seed=ctx.seed, progress=ctx.progress, description=f"{STAGE} rewind")
    layers = _target_layers(rewind, exclude_classifier=True)
    if not layers:
        raise EdgeCompressError("the model has no Conv/Linear layer to prune besides the classifier", where=STAGE)
    example = task.example_inputs(1).to(next(model.parameters()).device)
    bn_after = dict(layer_bn_pairs(rewind, build_graph(rewind, example))[0])
    names = {m: n for n, m in rewind.named_modules()}
    masks = {n: torch.ones_like(m.weight) for n, m in layers.items()}
    levels, current = [], None
    for level in range(config.levels + 1):
        if current is not None:
            masks = _global_masks(_target_layers(current, True), masks, config.rate)
        dead = _dead_filters(masks)
        candidate = copy.deepcopy(rewind)
        modules = dict(candidate.named_modules())
        dead_bn = {modules[names[bn_after[layers[n]]]]: idx for n, idx in dead.items()
                   if idx and config.zero_dead_bn and layers[n] in bn_after}
        applied = _apply_masks(candidate, masks, dead_bn)
        history = train(candidate, task, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                        seed=ctx.seed + level, progress=ctx.progress, description=f"{STAGE} level {level}")
        for module, param in applied:
            tprune.remove(module, param)
        path = save_model(candidate, work / f"level_{level}").parent
        levels.append({"level": level, "sparsity": sparsity(candidate), "val_accuracy": accuracy(candidate, task),
                       "dead_filters": sum(len(v) for v in dead.values()),
                       "filters": sum(m.weight.shape[0] for m in layers.values()),
                       "dead_per_layer": {n: len(v) for n, v in dead.items() if v}, "path": str(path),
                       "train_loss": history[-1]["loss"]})
        current = candidate
    ctx.info.update({"levels": levels, "rate": config.rate, "rewind_batches": config.rewind_batches,
                     "zero_dead_bn": config.zero_dead_bn, "workdir": str(work), "seconds": time.perf_counter() - start})
    return current
