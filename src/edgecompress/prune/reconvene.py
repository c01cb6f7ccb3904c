"""``prune.reconvene``: structured pruning at initialization (Reconvene, Eccles, Wong & Varghese 2024).

Start from an unstructured PaI mask (``prune.pai`` scores). A sensitivity evaluator ranks the conv layers;
the least sensitive ones are rebuilt as DENSE layers with proportionally fewer output channels (channels
physically removed with torch-pruning), the sensitive ones keep their unstructured masks; a rectifier
re-initializes the layers whose shape changed. Training then runs normally (``finetune`` with keep_zeros).

[design] The paper does not publish its sensitivity metric. Ours: a layer of mask density d keeps
``ceil(sqrt(d) * C_out)`` channels (``channel_rule``) (the filters with most surviving weights); its sensitivity is the increase of
validation loss, after ``probe_batches`` training batches, of "this layer structured" over "all unstructured"
(both probed the same way). Layers whose relative increase is at most ``tolerance`` are converted.
[design] Rectifier: Kaiming-normal re-initialization (fan_out, ReLU) of every conv/linear whose shape changed,
with the sensitive layers' zeros re-applied; BatchNorms of converted layers are reset.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Literal

import torch
import torch_pruning as tp
from pydantic import Field
from torch import nn

from edgecompress.context import StageContext
from edgecompress.tasks import Task
from edgecompress.nn.layers import build_graph
from edgecompress.prune import align
from edgecompress.prune.analysis import output_layers
from edgecompress.prune.pai import PaIConfig, Score, pai_masks
from edgecompress.registry import register
from edgecompress.train import mask_zeros, train

STAGE = "prune.reconvene"
_CONV = nn.modules.conv._ConvNd


class ReconveneConfig(align.AlignedConfig):
    """Settings of ``prune.reconvene``. Follow with ``finetune`` (keep_zeros: true) to train the result."""

    score: Score = Field("snip", description="PaI score of the starting mask: snip | grasp | synflow | magnitude | random")
    sparsity: float = Field(0.9, ge=0.0, lt=1.0, description="global sparsity of the starting PaI mask")
    tolerance: float = Field(0.1, ge=0.0, le=10.0, description="(our design) convert a layer when the probe loss "
                                                               "grows by at most this fraction")
    probe_batches: int = Field(10, ge=0, le=10000, description="(our design) training batches of each sensitivity "
                                                              "probe (0: density alone decides: all are converted)")
    lr: float = Field(0.05, gt=0.0, le=10.0, description="probe learning rate")
    batch_size: int = Field(64, ge=1, le=65536, description="probe and PaI batch size")
    channel_rule: Literal["sqrt", "linear"] = Field(
        "sqrt", description="(our design) channels kept by a converted layer of mask density d: ceil(sqrt(d) * C) "
                            "(consecutive converted layers then hold about d of their weights, like the mask) or "
                            "ceil(d * C) (smaller, less accurate)")
    min_channels: int = Field(2, ge=1, le=4096, description="a converted layer keeps at least this many channels")

    def labels_needed(self) -> str | None:
        return "its sensitivity probes train and score with the task's loss"



def _loss(model: nn.Module, task: Task) -> float:
    model.eval()
    with torch.no_grad():
        task.record("val")
        return float(task.loss(model, task.val.tensors))


def _structure(model: nn.Module, names: list[str], example: torch.Tensor, min_channels: int, rule: str = "sqrt",
               multiple: int = 1) -> dict[str, list[int]]:
    """Turn the named (zero-masked) convs into dense convs with ceil(sqrt(density) * C) (rule 'sqrt') or
    ceil(density * C) channels (rounded to ``multiple``, :func:`align.aligned_keep`), in place, and rectify.

    Returns {layer: [channels before, after]}. Zeros elsewhere stay (re-applied after re-initialization).
    """
    graph = build_graph(model, example)
    modules = dict(model.named_modules())
    shapes = {m: m.weight.shape for m in modules.values() if isinstance(m, (_CONV, nn.Linear))}
    channels = {}
    for name in names:
        conv = modules[name]
        alive = (conv.weight != 0).flatten(1).sum(1)
        density = float(alive.sum()) / conv.weight.numel()
        fraction = math.sqrt(density) if rule == "sqrt" else density
        keep = min(conv.out_channels, max(min_channels, math.ceil(fraction * conv.out_channels)))
        keep = align.aligned_keep(keep, conv.out_channels, multiple)
        drop = sorted(torch.argsort(alive, descending=True, stable=True)[keep:].tolist())
        channels[name] = [conv.out_channels, keep]
        if drop:
            graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=drop).prune()
    converted = {modules[n] for n in names}
    with torch.no_grad():  # Resilient Layer Rectifier [design]
        for m, shape in shapes.items():
            if m.weight.shape == shape and m not in converted:
                continue
            zeros = m.weight == 0  # torch-pruning sliced the weights, so the surviving zeros are exact
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                m.bias.zero_()
            if m not in converted:  # a sensitive layer that lost channels keeps its unstructured zeros
                m.weight.masked_fill_(zeros, 0.0)
        for m in converted:
            bn = _bn_after(graph, m)
            if bn is not None:
                bn.reset_parameters()
    return channels


def _bn_after(graph: tp.DependencyGraph, conv: nn.Module) -> nn.Module | None:
    outs = [o.module for o in graph.module2node[conv].outputs]
    return outs[0] if len(outs) == 1 and isinstance(outs[0], nn.modules.batchnorm._BatchNorm) else None


def _probe(model: nn.Module, task: Task, cfg: ReconveneConfig, seed: int) -> float:
    model = copy.deepcopy(model)
    masked = mask_zeros(model)
    train(model, task, epochs=1, lr=cfg.lr, batch_size=cfg.batch_size, max_batches=cfg.probe_batches, seed=seed,
          progress=False, schedule="constant")
    for m in masked:
        torch.nn.utils.prune.remove(m, "weight")
    return _loss(model, task)


@register(STAGE, ReconveneConfig)
def prune_reconvene(model: nn.Module, config: ReconveneConfig, ctx: StageContext) -> nn.Module:
    """Reconvene: PaI mask -> least structure-sensitive convs become dense and thinner, the rest stay masked.

    The sensitivity metric and rectifier are our design (the paper's are unpublished; see module docstring).
    Train the result with ``finetune`` (keep_zeros: true).
    """
    task = ctx.require_task(STAGE)
    start = time.perf_counter()
    multiple = align.resolve(config.round_to, ctx.export.runtime, f"{STAGE}.round_to")
    model = copy.deepcopy(model)
    masks = pai_masks(model, PaIConfig(score=config.score, sparsity=config.sparsity, batch_size=config.batch_size),
                      task, ctx.seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for n, mask in masks.items():
            modules[n].weight.mul_(mask)
    example = task.example_inputs(1)
    outputs = output_layers(build_graph(model, example))
    candidates = [n for n in masks if isinstance(modules[n], _CONV) and modules[n].groups == 1
                  and modules[n] not in outputs]
    density = {n: float(masks[n].mean()) for n in candidates}
    sensitivity: dict[str, float] = {}
    if config.probe_batches:
        base = _probe(model, task, config, ctx.seed)
        for n in candidates:
            trial = copy.deepcopy(model)
            _structure(trial, [n], example, config.min_channels, config.channel_rule, multiple)
            sensitivity[n] = (_probe(trial, task, config, ctx.seed) - base) / max(base, 1e-8)
        chosen = [n for n in candidates if sensitivity[n] <= config.tolerance]
    else:
        chosen = list(candidates)
    channels = _structure(model, chosen, example, config.min_channels, config.channel_rule, multiple)
    ctx.info.update({
        "score": config.score, "sparsity": config.sparsity, "density": density, "sensitivity": sensitivity,
        "structured": channels, "kept_unstructured": [n for n in candidates if n not in chosen],
        "seconds": time.perf_counter() - start, "round_to": multiple,
    })
    return model
