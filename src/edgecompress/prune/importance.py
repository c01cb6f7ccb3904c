"""Channel importance from unlabeled data: how much each channel contributes to the layers that consume it.

A channel ``c`` of a torch-pruning group reaches the network only through the Conv/Linear layers that take it as
an input. Removing it changes such a consumer's output by ``W[:, c] * x_c``, whose expected squared size is
``||W[:, c]||^2 * E[x_c^2]``; the importance of ``c`` is that sum over the group's consumers (the output-
reconstruction criterion of data-driven channel pruning, a channel-wise analogue of Wanda's ``|W| * ||X||``). The
second moments ``E[x_c^2]`` come from forward hooks on unlabeled calibration inputs. torch-pruning ships
weight-only and gradient criteria but none computed from activations, so this one is written here; it plugs into
torch-pruning as an ``Importance``.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from edgecompress.nn.layers import LAYER_TYPES

CONSUMER_FNS = (function.prune_conv_in_channels, function.prune_linear_in_channels)


def input_moments(model: nn.Module, inputs: torch.Tensor, batch_size: int = 32) -> dict[nn.Module, torch.Tensor]:
    """``E[x_c^2]`` of every Conv/Linear layer's input channel ``c`` over ``inputs`` (mean over samples and
    positions)."""
    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}

    def hook(module, args):
        x = args[0].detach()
        x = x.transpose(0, 1).flatten(1) if isinstance(module, nn.modules.conv._ConvNd) else x.flatten(0, -2).T
        sums[module] = sums.get(module, 0) + x.double().pow(2).sum(1)
        counts[module] = counts.get(module, 0) + x.shape[1]

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, LAYER_TYPES)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in inputs.split(batch_size):
                model(batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {m: (s / counts[m]).float() for m, s in sums.items()}


def consumers(group: tp.dependency.Group) -> list[tuple[nn.Module, list[int], list[int]]]:
    """``(layer, its input-channel indices, the root channels they carry)`` for each Conv/Linear of ``group``
    that takes the group's channels as ordinary (not depthwise) inputs."""
    return [(item.dep.layer, list(item.idxs), list(item.root_idxs)) for item in group
            if item.dep.pruning_fn in CONSUMER_FNS and None not in item.root_idxs]


def column_energy(layer: nn.Module) -> torch.Tensor:
    """``||W[:, c]||^2`` for every input channel ``c`` of a Conv/Linear layer (grouped convs included)."""
    groups = layer.groups if isinstance(layer, nn.modules.conv._ConvNd) else 1
    out_channels, in_per_group = layer.weight.shape[:2]
    weight = layer.weight.detach().double().reshape(groups, out_channels // groups, in_per_group, -1)
    return weight.pow(2).sum((1, 3)).flatten()


class ActivationImportance(tp.importance.Importance):
    """``sum over consumers of ||W[:, c]||^2 * E[x_c^2]`` per root channel, with the moments of
    :func:`input_moments` (refresh :attr:`moments` after each pruning step). A group none of whose consumers has
    moments falls back to the L2 norm of its weights."""

    def __init__(self, moments: dict[nn.Module, torch.Tensor] | None = None):
        self.moments = moments or {}
        self._fallback = tp.importance.MagnitudeImportance(p=2)

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor:
        n = len(group[0].idxs)
        scores = torch.zeros(n, dtype=torch.float64)
        found = False
        for layer, idxs, root_idxs in consumers(group):
            if layer not in self.moments:
                continue
            contribution = column_energy(layer).cpu() * self.moments[layer].double().cpu()
            scores.scatter_add_(0, torch.tensor(root_idxs), contribution[idxs])
            found = True
        return scores.float() if found else self._fallback(group)
