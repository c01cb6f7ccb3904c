"""``prune.pai``: pruning at initialization — one global unstructured mask from a saliency score, before training.

Scores (higher = keep), over the Conv/Linear weights (classifier excluded by default):
- ``magnitude``: ``|w|``.  ``random``: uniform noise.
- ``snip`` (Lee et al. 2019): ``|g ⊙ w|``, g = dL/dw on training batches.
- ``grasp`` (Wang et al. 2020): GraSP's score ``S = -w ⊙ Hg`` (H the Hessian, g the gradient; Hg by double
  backprop) and GraSP removes the LARGEST S, so the keep-score here is ``-S = w ⊙ Hg``.
- ``synflow`` (Tanaka et al. 2020): data-free; absolute weights, an all-ones input, ``R = sum(f(1))``, score
  ``|dR/dw ⊙ w|``, pruned iteratively with an exponential density schedule (``iterations`` rounds, BN in eval).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from edgecompress.context import StageContext
from edgecompress.tasks import Task
from edgecompress.errors import EdgeCompressError
from edgecompress.prune.magnitude import _target_layers
from edgecompress.registry import StageConfig, register

STAGE = "prune.pai"
Score = Literal["snip", "grasp", "synflow", "magnitude", "random"]


class PaIConfig(StageConfig):
    """Settings of ``prune.pai``: which saliency and how sparse. Follow with ``finetune`` (keep_zeros)."""

    score: Score = Field("snip", description="snip | grasp | synflow | magnitude | random")
    sparsity: float = Field(0.9, ge=0.0, lt=1.0, description="global fraction of the prunable weights set to zero")
    batches: int = Field(4, ge=1, le=1000, description="snip/grasp: training batches the gradients are summed over")
    batch_size: int = Field(64, ge=1, le=65536, description="snip/grasp: batch size")
    iterations: int = Field(100, ge=1, le=10000, description="synflow: pruning rounds (exponential schedule)")
    exclude_classifier: bool = Field(True, description="leave the classifier (last Linear) dense")

    def labels_needed(self) -> str | None:
        return f"{self.score} scores with gradients of the task's loss; synflow, magnitude and random need no data" \
            if self.score in ("snip", "grasp") else None


def _batches(task: Task, n: int, batch_size: int, seed: int):
    for i, batch in enumerate(task.loader("train", batch_size=batch_size, shuffle=True, seed=seed)):
        if i >= n:
            break
        yield batch


def _snip(model: nn.Module, layers: dict[str, nn.Module], task: Task, cfg: PaIConfig, seed: int):
    model.zero_grad(set_to_none=True)
    for batch in _batches(task, cfg.batches, cfg.batch_size, seed):
        task.loss(model, batch).backward()
    return {n: (m.weight.grad * m.weight).abs().detach() for n, m in layers.items()}


def _grasp(model: nn.Module, layers: dict[str, nn.Module], task: Task, cfg: PaIConfig, seed: int):
    weights = [m.weight for m in layers.values()]
    batches = list(_batches(task, cfg.batches, cfg.batch_size, seed))
    g = [torch.zeros_like(w) for w in weights]
    for batch in batches:  # g, held constant (stop-gradient)
        for acc, gi in zip(g, torch.autograd.grad(task.loss(model, batch), weights)):
            acc += gi
    hg = [torch.zeros_like(w) for w in weights]
    for batch in batches:  # Hg = d/dw (g_graph . g_const)
        grads = torch.autograd.grad(task.loss(model, batch), weights, create_graph=True)
        z = sum((gi * ci).sum() for gi, ci in zip(grads, g))
        for acc, h in zip(hg, torch.autograd.grad(z, weights)):
            acc += h
    return {n: (w * h).detach() for n, w, h in zip(layers, weights, hg)}  # keep-score = -(-w ⊙ Hg)


def _synflow(model: nn.Module, layers: dict[str, nn.Module], task: Task, cfg: PaIConfig, seed: int):
    """Iterative SynFlow; returns the final scores with already-pruned weights at -inf."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.state_dict().values():
            if p.is_floating_point():
                p.abs_()
    mine = {n: m for n, m in net.named_modules() if n in layers}
    masks = {n: torch.ones_like(m.weight) for n, m in mine.items()}
    originals = {n: m.weight.detach().clone() for n, m in mine.items()}
    ones = torch.ones(1, *task.input_shape, dtype=torch.float64)
    total = sum(m.numel() for m in masks.values())
    scores = {}
    for k in range(1, cfg.iterations + 1):
        with torch.no_grad():
            for n, m in mine.items():
                m.weight.copy_(originals[n] * masks[n])
        net.zero_grad(set_to_none=True)
        net(ones).sum().backward()
        scores = {n: (m.weight.grad * m.weight).abs().detach() for n, m in mine.items()}
        density = (1 - cfg.sparsity) ** (k / cfg.iterations)
        masks = _masks_from(scores, round(density * total), masks)
    return {n: torch.where(masks[n].bool(), scores[n], torch.full_like(scores[n], -float("inf"))).float()
            for n in scores}


def _masks_from(scores: dict[str, torch.Tensor], keep: int, previous: dict | None = None) -> dict[str, torch.Tensor]:
    """Global top-``keep`` masks (ties at the threshold broken by order); ``previous`` zeros stay zero."""
    flat = torch.cat([(s if previous is None else s.masked_fill(~previous[n].bool(), -float("inf"))).flatten()
                      for n, s in scores.items()])
    chosen = torch.zeros_like(flat)
    chosen[torch.topk(flat, max(keep, 0)).indices] = 1
    out, i = {}, 0
    for n, s in scores.items():
        out[n] = chosen[i:i + s.numel()].reshape(s.shape).to(s.dtype)
        i += s.numel()
    return out


def pai_scores(model: nn.Module, score: Score, task: Task | None, config: PaIConfig | None = None,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """Keep-scores (higher = more important) of every prunable weight of ``model`` (not modified)."""
    cfg = config or PaIConfig(score=score)
    model = copy.deepcopy(model)
    layers = _target_layers(model, cfg.exclude_classifier)
    if score == "magnitude":
        return {n: m.weight.detach().abs() for n, m in layers.items()}
    if score == "random":
        gen = torch.Generator().manual_seed(seed)
        return {n: torch.rand(m.weight.shape, generator=gen) for n, m in layers.items()}
    if task is None:
        raise EdgeCompressError(f"PaI score {score!r} needs a task (input shape, and data for snip/grasp)",
                                where=STAGE, fix="pass a task")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {"snip": _snip, "grasp": _grasp, "synflow": _synflow}[score](model, layers, task, cfg, seed)


def pai_masks(model: nn.Module, config: PaIConfig, task: Task | None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Global binary masks keeping the top (1 - sparsity) fraction of the prunable weights by the score."""
    scores = pai_scores(model, config.score, task, config, seed)
    total = sum(s.numel() for s in scores.values())
    return _masks_from(scores, round((1 - config.sparsity) * total))


@register(STAGE, PaIConfig)
def prune_pai(model: nn.Module, config: PaIConfig, ctx: StageContext) -> nn.Module:
    """Pruning at initialization (SNIP, GraSP, SynFlow, magnitude, random): one global mask, zeros made permanent.

    Meant for an untrained model; train it afterwards with ``finetune`` (keep_zeros keeps the mask).
    """
    model = copy.deepcopy(model)
    masks = pai_masks(model, config, ctx.task, ctx.seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for n, mask in masks.items():
            modules[n].weight.mul_(mask)
    ctx.info.update({"score": config.score, "sparsity": config.sparsity,
                     "layer_density": {n: float(m.mean()) for n, m in masks.items()}})
    return model
