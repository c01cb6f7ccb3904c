"""One no-grad forward pass with temporary hooks: the pattern every analysis that watches a forward pass uses."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def forward_with_hooks(model: nn.Module, x: torch.Tensor, handles: Iterable[RemovableHandle]) -> None:
    """Run ``model(x)`` once without gradients, then remove ``handles`` (the hooks registered to watch it),
    even when the forward pass raises."""
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
