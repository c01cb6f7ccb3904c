"""Layer-by-layer calibration of a transformer: the sequential engine for decoder/encoder stacks.

:func:`edgecompress.nn.sequential.run_sequential` needs a model that runs as a chain of single-tensor blocks;
a transformer layer also takes keyword inputs (attention mask, rotary position embeddings, position ids) that
the model computes once before its first layer. This driver captures each calibration batch's call into the
first layer (hidden states plus those keywords) with a pre-hook, then visits the layers in order: the visitor
sees one layer and the cached calls, changes the layer, and the driver replaces every cached hidden state by
the changed layer's output, so the next layer is calibrated on the activations of the already-changed model
(SparseGPT's and Wanda's scheme). Only the layer being visited is on ``device``; the cache holds the hidden
states of every calibration batch at one layer boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from edgecompress import distributed
from edgecompress.llm.arch import INPUT_GROUPS, Transformer
from edgecompress.llm.criteria import InputStats


@dataclass
class LayerCall:
    """One calibration batch's call into a layer: the hidden states and the other arguments as the model passed them."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict


class _Stop(Exception):
    pass


def _to(value, device: torch.device):
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device) for v in value)
    return value


def capture_calls(arch: Transformer, batches: Iterable[dict[str, torch.Tensor]], device: torch.device
                  ) -> list[LayerCall]:
    """Each batch's call into the first layer (the model runs on its own device up to there), moved to ``device``."""
    calls: list[LayerCall] = []

    def grab(_module, args, kwargs):
        calls.append(LayerCall(args[0] if args else kwargs.pop("hidden_states"), tuple(args[1:]), dict(kwargs)))
        raise _Stop

    handle = arch.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in distributed.shard(list(batches)):  # under torchrun each rank keeps its own batches
                try:
                    arch.model(**batch, use_cache=False) if arch.family.kind == "decoder" else arch.model(**batch)
                except _Stop:
                    pass
    finally:
        handle.remove()
    for call in calls:
        call.hidden, call.args, call.kwargs = _to(call.hidden, device), _to(call.args, device), _to(call.kwargs, device)
        call.kwargs.pop("past_key_values", None)
        call.kwargs.pop("past_key_value", None)
    return calls


def run_layer(layer: nn.Module, calls: list[LayerCall]) -> list[torch.Tensor]:
    """The layer's output hidden states on every cached call."""
    outs = []
    with torch.no_grad():
        for call in calls:
            out = layer(call.hidden, *call.args, **call.kwargs)
            outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


def collect_stats(arch: Transformer, i: int, layer: nn.Module, calls: list[LayerCall], hessian: bool,
                  roles: Iterable[str] | None = None) -> dict[str, InputStats]:
    """One forward pass of layer ``i`` over the calls: the input statistics of its projections (``roles``, default
    all), one per input group (:data:`~edgecompress.llm.arch.INPUT_GROUPS`: q, k and v read the same tensor)."""
    stats: dict[str, InputStats] = {}
    handles = []
    for role, proj in arch.projections(i).items():
        group = INPUT_GROUPS[role]
        if (roles is None or role in roles) and group not in stats:
            stats[group] = InputStats(proj.in_features, hessian)
            handles.append(proj.register_forward_pre_hook(lambda _m, args, s=stats[group]: s.add(args[0])))
    try:
        run_layer(layer, calls)
    finally:
        for h in handles:
            h.remove()
    return {group: s.reduce() for group, s in stats.items()}


def run_layers(arch: Transformer, calls: list[LayerCall], visit: Callable[[int, nn.Module, list[LayerCall]], None],
               device: torch.device, propagate: bool = True) -> None:
    """Visit every layer in order (``visit(i, layer, calls)`` may change the layer), moving each layer to
    ``device`` for its visit and back. With ``propagate`` the next layer sees the changed layer's outputs; without
    it, the outputs of the layer as it was before the visit."""
    for i, layer in enumerate(arch.layers):
        home = next(layer.parameters()).device
        layer.to(device)
        before = None if propagate else run_layer(layer, calls)
        visit(i, layer, calls)
        outs = run_layer(layer, calls) if propagate else before
        for call, out in zip(calls, outs):
            call.hidden = out
        layer.to(home)
