"""Walking a network layer by layer without storing its activations: the forward order of its Conv/Linear
layers, a layer's input or output for one batch (the forward pass stops right there), the BatchNorm that
directly consumes a layer's output, and the MACs of a forward prefix (for FLOP accounting)."""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.hooks import forward_with_hooks
from edgecompress.measure import layer_table
from edgecompress.prune.analysis import prunable_layers


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted tensor is captured."""


def forward_order(model: nn.Module, x: torch.Tensor) -> tuple[list[str], set[str]]:
    """Names of the Conv/Linear layers in the order the forward pass calls them, and the names of layers
    called more than once per pass (weight sharing; their statistics would mix several inputs)."""
    layers = prunable_layers(model)
    calls: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _i, n=n: calls.append(n)) for n, m in layers.items()]
    forward_with_hooks(model, x[:1], handles)
    order = list(dict.fromkeys(calls))
    return order, {n for n in order if calls.count(n) > 1}


def capture(model: nn.Module, name: str, x: torch.Tensor, what: str) -> torch.Tensor:
    """The ``input`` or ``output`` of module ``name`` when ``model`` runs on ``x`` (no grad; the rest of the
    network after that module is not run)."""
    module = model.get_submodule(name)
    box: list[torch.Tensor] = []

    def pre_hook(_m, inputs):
        box.append(inputs[0].detach())
        raise _Stop

    def hook(_m, _inputs, output):
        box.append(output.detach())
        raise _Stop

    handle = module.register_forward_pre_hook(pre_hook) if what == "input" else module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not box:
        raise RuntimeError(f"module {name!r} was not called in the forward pass")
    return box[0]


def bn_after(model: nn.Module, x: torch.Tensor) -> dict[str, str]:
    """For each Conv/Linear layer whose output goes straight into a BatchNorm, that BatchNorm's name."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: dict[str, str] = {}
    handles = []
    for name, m in prunable_layers(model).items():
        handles.append(m.register_forward_hook(lambda _m, _i, out, n=name: produced.__setitem__(id(out), (n, out))))
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            def pre(_m, inputs, n=name):
                hit = produced.get(id(inputs[0]))
                if hit is not None and hit[1] is inputs[0]:
                    pairs.setdefault(hit[0], n)
            handles.append(m.register_forward_pre_hook(pre))
    forward_with_hooks(model, x[:1], handles)
    return pairs


def prefix_macs(model: nn.Module, order: list[str], x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """For each layer in ``order``: (MACs of one sample up to the layer's input, MACs up to its output).

    Only Conv/Linear MACs are counted (as in ``count_macs``); a prefix includes every layer called before.
    """
    macs = {row["name"]: row["macs"] for row in layer_table(model, x[:1])}
    out, total = {}, 0
    for name in order:
        before = total
        total += macs.get(name, 0)
        out[name] = (before, total)
    return out


def changed_layers(model: nn.Module, dense: nn.Module) -> list[str]:
    """Conv/Linear layers of ``model`` that differ from the same-named layer of ``dense`` (pruned, re-shaped
    or re-weighted), or that have no counterpart there."""
    reference = prunable_layers(dense)
    changed = []
    for name, m in prunable_layers(model).items():
        d = reference.get(name)
        if d is None or d.weight.shape != m.weight.shape or not torch.equal(d.weight, m.weight):
            changed.append(name)
    return changed
