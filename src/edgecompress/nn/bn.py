"""BatchNorm folding and BatchNorm statistics re-estimation.

Folding takes its arithmetic from ``torch.nn.utils.fusion`` and its pairs from torch-pruning's dependency graph:
a BatchNorm is folded only when its sole input is a Conv/Linear layer that feeds nothing else, so folding can
never change what another consumer of that layer sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

_BN = nn.modules.batchnorm._BatchNorm
FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats and m.running_mean is not None]


def layer_bn_pairs(model: nn.Module, graph: tp.DependencyGraph) -> tuple[list[tuple[nn.Module, nn.Module]], list[str]]:
    """(layer, bn) for each BatchNorm with running statistics fed only by a Conv/Linear layer that feeds
    nothing else; the names of the other BatchNorms."""
    names = {m: n for n, m in model.named_modules()}
    pairs, left = [], []
    for module, node in graph.module2node.items():
        if not isinstance(module, _BN):
            continue
        producers = [i.module for i in node.inputs]
        layer = producers[0] if len(producers) == 1 else None
        width = getattr(layer, "out_features", getattr(layer, "out_channels", None))
        if isinstance(layer, FOLDABLE) and len(graph.module2node[layer].outputs) == 1 \
                and module.track_running_stats and module.num_features == width:
            pairs.append((layer, module))
        else:
            left.append(names[module])
    return pairs, sorted(left)


@torch.no_grad()
def fold_batchnorms(model: nn.Module, graph: tp.DependencyGraph, *, remove: bool = False) -> tuple[list[str], list[str]]:
    """Fold each BatchNorm of :func:`layer_bn_pairs` into its layer, in place (the layer gains a bias).

    The BatchNorm becomes an exact identity (weight 1, bias 0, mean 0, var 1, eps 0), so the module tree and
    checkpoints keep their shape; with ``remove`` it is replaced by ``nn.Identity`` (nothing left to train).
    Returns (folded BatchNorm names, names of the BatchNorms left as they are).
    """
    names = {m: n for n, m in model.named_modules()}
    pairs, left = layer_bn_pairs(model, graph)
    for layer, bn in pairs:
        gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
        beta = bn.bias if bn.affine else torch.zeros_like(bn.running_var)
        fuse = fuse_linear_bn_weights if isinstance(layer, nn.Linear) else fuse_conv_bn_weights
        layer.weight, layer.bias = fuse(layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, gamma, beta)
        if remove:
            model.set_submodule(names[bn], nn.Identity())
            continue
        if bn.affine:
            bn.weight.fill_(1.0)
            bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.eps = 0.0
    return sorted(names[bn] for _, bn in pairs), left


def is_identity_bn(m: nn.Module) -> bool:
    """A BatchNorm that :func:`fold_batchnorms` turned into an exact identity."""
    if not isinstance(m, _BN) or m.running_mean is None:
        return False
    affine_id = not m.affine or bool((m.weight == 1).all() and (m.bias == 0).all())
    return affine_id and m.eps == 0 and bool((m.running_mean == 0).all() and (m.running_var == 1).all())


@torch.no_grad()
def reestimate_bn(model: nn.Module, inputs: Iterable[torch.Tensor],
                  forward: Callable[[int, torch.Tensor], object] | None = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as the cumulative average (momentum
    None) over the batches ``inputs``: BatchNorms in train mode, every other module in eval mode (dropout off,
    as at inference). ``forward(i, x)`` runs batch number ``i`` (default ``model(x)``). Only statistics change;
    the model's mode is restored. Returns the number of BatchNorms."""
    bns = bn_layers(model)
    if not bns:
        return 0
    was_training, momenta = model.training, [m.momentum for m in bns]
    device = next(model.parameters()).device
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for i, x in enumerate(inputs):
            (forward or (lambda _, batch: model(batch)))(i, x.to(device))
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(bns)


@contextmanager
def bn_statistics_kept(model: nn.Module) -> Iterator[None]:
    """Within the block BatchNorm statistics may change; they are restored when it ends."""
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bn_layers(model)]
    try:
        yield
    finally:
        for m, mean, var, count in saved:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
