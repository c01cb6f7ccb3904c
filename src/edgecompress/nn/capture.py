"""Watching one forward pass without storing a network's activations: temporary hooks that are always removed,
a module's input and/or output for one batch (the pass stops right there), the order in which the Conv/Linear
layers are called, and the BatchNorm that directly consumes a layer's output."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from edgecompress.nn.layers import weight_layers


def forward_with_hooks(model: nn.Module, x: torch.Tensor, handles: Iterable[RemovableHandle]) -> None:
    """Run ``model(x)`` once without gradients, then remove ``handles`` (the hooks registered to watch it),
    even when the forward pass raises."""
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted tensor is captured."""


def _first_call(model: nn.Module, module: nn.Module | str, x: torch.Tensor, before: bool) -> tuple:
    """Run ``model(x)`` (no grad) until ``module`` (or the module of that name) is first called: what a pre-hook
    sees, ``(inputs,)``, when ``before``, else what a forward hook sees, ``(inputs, output)``; the pass stops
    there. Raises LookupError when the forward pass does not call it."""
    target = model.get_submodule(module) if isinstance(module, str) else module
    box: list[tuple] = []

    def stop(_m, *seen):
        box.append(seen)
        raise _Stop

    handle = target.register_forward_pre_hook(stop) if before else target.register_forward_hook(stop)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not box:
        raise LookupError(f"module {module if isinstance(module, str) else type(module).__name__!r} was not "
                          "called in the forward pass")
    return box[0]


def capture(model: nn.Module, module: nn.Module | str, x: torch.Tensor, what: str) -> torch.Tensor:
    """The ``input`` or ``output`` of ``module`` (or the module of that name) the first time it is called when
    ``model`` runs on ``x`` (no grad; the rest of the network after it is not run). Raises LookupError when the
    forward pass does not call it."""
    seen = _first_call(model, module, x, before=what == "input")
    return (seen[0][0] if what == "input" else seen[1]).detach()


def capture_io(model: nn.Module, module: nn.Module | str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and the output of ``module``'s first call when ``model`` runs on ``x`` (no grad; the pass stops
    right after that call)."""
    inputs, output = _first_call(model, module, x, before=False)
    return inputs[0].detach(), output.detach()


def forward_order(model: nn.Module, x: torch.Tensor) -> tuple[list[str], set[str]]:
    """Names of the Conv/Linear layers in the order the forward pass calls them, and the names of layers
    called more than once per pass (weight sharing; their statistics would mix several inputs)."""
    calls: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _i, n=n: calls.append(n)) for n, m in weight_layers(model).items()]
    forward_with_hooks(model, x[:1], handles)
    order = list(dict.fromkeys(calls))
    return order, {n for n in order if calls.count(n) > 1}


def bn_after(model: nn.Module, x: torch.Tensor) -> dict[str, str]:
    """For each Conv/Linear layer whose output goes straight into a BatchNorm, that BatchNorm's name."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: dict[str, str] = {}
    handles = []
    for name, m in weight_layers(model).items():
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
