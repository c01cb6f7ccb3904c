"""Which layers can lose output channels, and why not: built on torch-pruning's dependency graph."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch_pruning as tp
from torch import nn

from edgecompress.nn.layers import LAYER_TYPES, build_graph, is_depthwise, resolve_layers, weight_layers


def ratio_or_macs_target(data, ratio_key: str, default: float = 0.5):
    """Config pre-validation shared by the structured pruners: ``ratio_key`` and ``target_macs_ratio`` are
    mutually exclusive, and ``ratio_key`` defaults to ``default`` when neither is given."""
    if isinstance(data, dict):
        if data.get(ratio_key) is not None and data.get("target_macs_ratio") is not None:
            raise ValueError(f"give either {ratio_key} or target_macs_ratio, not both")
        if data.get(ratio_key) is None and data.get("target_macs_ratio") is None:
            data = {**data, ratio_key: default}
    return data


def _consumes_channels(module: object) -> bool:
    """True for layers that mix channels (a depthwise conv passes its input channels through)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return not is_depthwise(module)
    return isinstance(module, (nn.Linear, nn.RNNBase, nn.MultiheadAttention))


def output_layers(graph: tp.DependencyGraph) -> set[nn.Module]:
    """Conv/Linear layers whose output channels reach a model output without passing another such layer."""
    found = set()
    for module, node in graph.module2node.items():
        if not isinstance(module, LAYER_TYPES):
            continue
        stack, seen = [node], set()
        while stack:
            current = stack.pop()
            if not current.outputs:
                found.add(module)
                break
            for nxt in current.outputs:
                if nxt not in seen and not _consumes_channels(nxt.module):
                    seen.add(nxt)
                    stack.append(nxt)
    return found


def _coupled_layers(graph: tp.DependencyGraph, module: nn.Module) -> tuple[tp.dependency.Group, list[nn.Module]]:
    """The pruning group of ``module``'s first output channel, and the other Conv/Linear layers whose
    output channels it removes too (coupled through residual adds, concatenations, depthwise convs)."""
    group = graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels, idxs=[0])
    coupled = []
    for dep, _ in group:
        target = dep.target.module
        if target is not module and isinstance(target, LAYER_TYPES) and graph.is_out_channel_pruning_fn(dep.handler):
            coupled.append(target)
    return group, coupled


def prunability(
    model: nn.Module, example_inputs: torch.Tensor, ignored_layers: Iterable[str] = (),
) -> dict[str, tuple[bool, str]]:
    """For each Conv/Linear layer: can its output channels be removed structurally, and why (not)?

    ``ignored_layers``: module names or globs the user keeps intact. The model is not modified.
    """
    layers = weight_layers(model)
    ignored = resolve_layers(model, ignored_layers, where="ignored_layers")
    try:
        graph = build_graph(model, example_inputs)
    except Exception as exc:  # noqa: BLE001  (torch-pruning raises many kinds of errors on untraceable models)
        reason = f"torch-pruning cannot trace: {type(exc).__name__}: {exc}"
        return {n: (False, "ignored by user" if n in ignored else reason) for n in layers}
    names = {m: n for n, m in layers.items()}
    outputs = output_layers(graph)
    blocked = {m: "ignored by user" for n, m in layers.items() if n in ignored}
    blocked.update({m: "a final classifier" for m in outputs})
    result: dict[str, tuple[bool, str]] = {}
    for name, module in layers.items():
        if name in ignored:
            result[name] = (False, "ignored by user")
        elif module not in graph.module2node:
            result[name] = (False, "not used when the model runs on the example inputs")
        elif module in outputs:
            result[name] = (False, "final classifier: its outputs are the model's outputs")
        else:
            group, coupled = _coupled_layers(graph, module)
            blocker = next((m for m in coupled if m in blocked), None)
            together = ", ".join(n for n, m in layers.items() if m in coupled)
            if blocker is not None:
                result[name] = (False, f"tied to {names.get(blocker, '?')} ({blocked[blocker]}) whose channels stay")
            elif not graph.check_pruning_group(group):
                result[name] = (False, "a layer in its group has only one channel left")
            elif is_depthwise(module) and not together:
                result[name] = (False, "depthwise convolution whose input channels no prunable layer makes")
            elif is_depthwise(module):
                result[name] = (True, f"depthwise convolution: channels tied to its input, pruned with {together}")
            elif isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
                result[name] = (True, f"grouped convolution ({module.groups} groups): channels removed evenly per group")
            else:
                result[name] = (True, f"prunable together with {together}" if together else "prunable")
    return result
