"""Replay of a forward's unchanged prefix: when only some layers change (a mask, a perturbation), the blocks that
finish before the first of them runs see the same inputs and give the same outputs, so their recorded outputs are
returned instead of recomputed. Measuring the effect of many single-layer changes (a sensitivity scan) then costs
the tail of the network per change, not the whole forward.

Blocks are the outermost children of ``nn.Sequential``/``nn.ModuleList`` containers (a ResNet's residual blocks,
an EfficientNet's MBConv blocks) that run once per forward and return one tensor; their order comes from hooks on
one recorded forward. Outputs are copied when recorded and when replayed, so in-place operations after a block
(``ReLU(inplace=True)``, ``out += identity``) change neither. torch.fx could split the graph more finely, but many user models do not trace; hooks work on
any model whose forward calls its blocks in a fixed order.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def outer_blocks(model: nn.Module) -> list[nn.Module]:
    """The outermost children of the sequential containers in ``model``."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(module, (nn.Sequential, nn.ModuleList)):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


class PrefixReplay:
    """The outputs of ``model``'s blocks on each of ``batches`` (and the model's outputs, :attr:`reference`)."""

    def __init__(self, model: nn.Module, batches: list[torch.Tensor]):
        self.model, blocks = model, outer_blocks(model)
        ticks, calls = itertools.count(), Counter()
        self.start: dict[nn.Module, int] = {}
        self.end: dict[nn.Module, int] = {}
        self.outputs: dict[nn.Module, list[torch.Tensor]] = {b: [] for b in blocks}

        def before(module, args):
            self.start.setdefault(module, next(ticks))
            calls[module] += 1

        def after(module, args, output):
            self.end.setdefault(module, next(ticks))
            self.outputs[module].append(output.clone() if isinstance(output, torch.Tensor) else output)

        hooks = [m.register_forward_pre_hook(before) for m in model.modules()]
        hooks += [b.register_forward_hook(after) for b in blocks]
        try:
            with torch.no_grad():
                self.reference = [model(x) for x in batches]
        finally:
            for h in hooks:
                h.remove()
        self.blocks = [b for b in blocks if calls[b] == len(batches)
                       and all(isinstance(y, torch.Tensor) for y in self.outputs[b])]

    def before(self, layers: list[nn.Module]) -> list[nn.Module]:
        """The blocks that finish before the first of ``layers`` starts."""
        first = min((self.start[m] for m in layers if m in self.start), default=0)
        return [b for b in self.blocks if self.end[b] < first]

    @contextmanager
    def replaying(self, blocks: list[nn.Module], batch: int) -> Iterator[None]:
        """Within the block, ``blocks`` return their recorded outputs of batch number ``batch``."""
        for b in blocks:
            b.forward = lambda *args, _y=self.outputs[b][batch], **kwargs: _y.clone()  # later in-place ops
        try:
            yield
        finally:
            for b in blocks:
                del b.forward
