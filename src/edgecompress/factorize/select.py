"""Which layers a rewrite stage works on (``layers``/``ignore`` globs) and the sizes they see in one forward pass."""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.nn.layers import resolve_layers
from edgecompress.tasks.base import call


def layer_positions(model: nn.Module, layers: dict[str, nn.Module], example) -> dict[str, tuple[int, int, int, int]]:
    """Input and output spatial sizes of each layer's first call on one sample (Linear: token positions)."""
    seen: dict[str, tuple[int, int, int, int]] = {}

    def hook(name):
        def record(m, args, out):
            if name not in seen:
                if isinstance(m, nn.Linear):
                    tokens = out.numel() // m.out_features
                    seen[name] = (tokens, 1, tokens, 1)
                else:
                    seen[name] = (*args[0].shape[-2:], *out.shape[-2:])
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            call(model.eval(), example)
    finally:
        for h in handles:
            h.remove()
    return seen


def select_layers(model: nn.Module, layers: list[str], ignore: list[str], stage: str,
                  types: tuple[type, ...]) -> dict[str, nn.Module]:
    """The modules of ``types`` named by ``layers`` (all when empty) and not by ``ignore`` (names or globs)."""
    chosen = resolve_layers(model, layers, f"{stage}.layers") if layers else None
    ignored = resolve_layers(model, ignore, f"{stage}.ignore")
    return {n: m for n, m in model.named_modules() if isinstance(m, types) and (chosen is None or n in chosen)
            and n not in ignored}
