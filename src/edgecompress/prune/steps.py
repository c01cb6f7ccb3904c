"""Step plans for iterative structured pruning: which dependency groups lose how many channels per step.

A *group* is one torch-pruning dependency group (a conv/linear layer's output channels and everything
coupled to them: its BatchNorm, the next layers' input channels, residual partners). A plan lists, per
step, the groups to prune and the channel count each keeps after the step, so every pipeline built on it
(conventional, ICE, a search trial) prunes exactly the same way. Channels are ranked by the group's L1
weight norm (torch-pruning ``MagnitudeImportance(p=1)``, Li et al. 2017).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.measure.counts import count_macs
from edgecompress.nn.layers import build_graph, resolve_layers
from edgecompress.prune.align import aligned_keep
from edgecompress.prune.analysis import output_layers

_IMPORTANCE = tp.importance.MagnitudeImportance(p=1)


@dataclass
class Group:
    name: str  # qualified name of the root layer
    root: nn.Module
    fn: Callable
    channels: int  # output channels before pruning


@dataclass
class Plan:
    """The groups of one model (in network order) and, per step, ``[(group index, channels kept), ...]``."""

    graph: tp.DependencyGraph
    groups: list[Group]
    steps: list[list[tuple[int, int]]]
    clamped: list[str] = field(default_factory=list)  # groups whose keep count was raised to 1 channel
    multiple: int = 1  # channel counts are rounded to multiples of this (prune.align)

    def channel_ratio(self) -> float:
        """Fraction of the groups' output channels removed so far."""
        now = sum(self.graph.get_out_channels(g.root) for g in self.groups)
        return 1 - now / max(1, sum(g.channels for g in self.groups))


def find_groups(model: nn.Module, example: torch.Tensor, ignored: list[str], where: str
                ) -> tuple[tp.DependencyGraph, list[Group]]:
    """torch-pruning's dependency graph and prunable groups, ordered by their first layer in the network.

    The layers that produce the model's outputs (the classifier) and ``ignored`` (names or globs) keep
    their output channels."""
    graph = build_graph(model, example)
    modules = dict(model.named_modules())
    order = {m: i for i, m in enumerate(modules.values())}
    names = {m: n for n, m in modules.items()}
    skip = output_layers(graph) | {modules[n] for n in resolve_layers(model, ignored, where)}
    groups = []
    for group in graph.get_all_groups(ignored_layers=list(skip)):
        dep = group[0].dep
        first = min(order[item.dep.target.module] for item in group
                    if item.dep.target.module in order and item.dep.handler == dep.handler)
        groups.append((first, Group(names[dep.target.module], dep.target.module, dep.handler,
                                    graph.get_out_channels(dep.target.module))))
    if not groups:
        raise EdgeCompressError("the model has no prunable channel groups", where=where,
                                fix="shorten ignored_layers; the classifier's outputs are always kept")
    return graph, [g for _, g in sorted(groups, key=lambda item: item[0])]


def final_keep(groups: list[Group], ratio: float, multiple: int = 1) -> tuple[list[int], list[str]]:
    """Channels each group keeps at the target ``ratio``: ``C - ceil(ratio * C)`` as in the paper, but at
    least one (a group may not vanish), rounded to ``multiple`` (:func:`aligned_keep`); returns the counts and
    the names of the groups that were clamped."""
    keep, clamped = [], []
    for g in groups:
        k = g.channels - math.ceil(ratio * g.channels - 1e-9)
        if k < 1:
            clamped.append(g.name)
        keep.append(aligned_keep(max(1, k), g.channels, multiple))
    return keep, clamped


def make_plan(graph: tp.DependencyGraph, groups: list[Group], ratio: float,
              mode: Literal["block", "uniform"], steps: int | None, multiple: int = 1) -> Plan:
    """block: groups in network order, split into ``steps`` consecutive chunks (default one group a step),
    each pruned to its final count in its step; uniform: every group loses an equal share each step. Every
    count is rounded to ``multiple``."""
    keep, clamped = final_keep(groups, ratio, multiple)
    if mode == "block":
        count = min(steps or len(groups), len(groups))
        if steps and steps > len(groups):
            warnings.warn(f"block mode has only {len(groups)} groups: using {len(groups)} steps, not {steps}",
                          stacklevel=2)
        chunks = np.array_split(np.arange(len(groups)), count)
        plan = [[(int(i), keep[i]) for i in chunk] for chunk in chunks]
    else:
        count = steps or 6
        plan = [[(i, aligned_keep(g.channels - round((g.channels - keep[i]) * k / count), g.channels, multiple))
                 for i, g in enumerate(groups)] for k in range(1, count + 1)]
    return Plan(graph, groups, plan, clamped, multiple)


def prune_group(graph: tp.DependencyGraph, group: Group, keep: int) -> None:
    """Remove the ``C - keep`` channels of ``group`` with the smallest L1 norm (no-op if already there)."""
    n = graph.get_out_channels(group.root)
    if keep >= n:
        return
    scores = _IMPORTANCE(graph.get_pruning_group(group.root, group.fn, list(range(n))))
    drop = torch.argsort(scores)[: n - keep].tolist()
    graph.get_pruning_group(group.root, group.fn, drop).prune()


def macs_ratio_at(model: nn.Module, example: torch.Tensor, ignored: list[str], ratio: float, where: str,
                  multiple: int = 1) -> float:
    """MACs of ``model`` with every group pruned to its final count at ``ratio``, over the original MACs."""
    clone = copy.deepcopy(model)
    graph, groups = find_groups(clone, example, ignored, where)
    for group, keep in zip(groups, final_keep(groups, ratio, multiple)[0]):
        prune_group(graph, group, keep)
    return count_macs(clone, example) / count_macs(model, example)


def ratio_for_macs(model: nn.Module, example: torch.Tensor, ignored: list[str], target: float, where: str,
                   max_ratio: float = 0.95, multiple: int = 1) -> float:
    """The smallest channel ratio (to 0.005) whose final model (counts rounded to ``multiple``) has MACs <=
    ``target`` x the original."""
    def macs(ratio: float) -> float:
        return macs_ratio_at(model, example, ignored, ratio, where, multiple)

    if macs(max_ratio) > target:
        raise EdgeCompressError(
            f"target_macs_ratio {target} is unreachable: removing {max_ratio:.0%} of every group's channels "
            f"leaves {macs(max_ratio):.3f}x of the MACs", where=where,
            fix="raise target_macs_ratio, shorten ignored_layers" + (", or lower round_to" if multiple > 1 else ""))
    low, high = 0.0, max_ratio
    while high - low > 0.005:
        mid = (low + high) / 2
        low, high = (mid, high) if macs(mid) > target else (low, mid)
    return high
