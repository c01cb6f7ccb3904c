"""A Conv/Linear layer's inputs as the rows of a matrix, one block per conv group: the data layout that GPTQ's
Hessian (``quant.weight``) and the least-squares re-solve of ``recover.mimic`` both accumulate ``X^T X`` from.

``F.unfold`` extracts the patches; hand-written here is what it lacks: a Conv1d seen as a Conv2d of height 1,
``"same"``/``"valid"`` padding turned into numbers, and the split of the patch columns per conv group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONVS = (nn.Conv1d, nn.Conv2d)  # the convs with an im2col view here


def unsupported(layer: nn.Module) -> str | None:
    """Why ``layer``'s inputs have no row view here (None when they have)."""
    if isinstance(layer, nn.Linear):
        return None
    if not isinstance(layer, CONVS):
        return f"{type(layer).__name__} is not supported (Conv1d, Conv2d and Linear are)"
    if layer.padding_mode != "zeros":
        return f"padding_mode {layer.padding_mode!r} (only zero padding has an im2col view here)"
    if isinstance(layer.padding, str) and layer.padding != "valid" and any(
            d * (k - 1) % 2 for d, k in zip(layer.dilation, layer.kernel_size)):
        return "asymmetric 'same' padding"
    return None


def groups(layer: nn.Module) -> int:
    """Independent input/output blocks of ``layer``: a conv's groups, 1 for a Linear."""
    return layer.groups if isinstance(layer, CONVS) else 1


def _padding(layer: nn.Module) -> tuple[int, ...]:
    if layer.padding == "valid":
        return (0,) * len(layer.kernel_size)
    if layer.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(layer.dilation, layer.kernel_size))
    return tuple(layer.padding)


def im2col(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The Conv's input patches ``[N, C_in * prod(kernel), positions]`` (channel-major, like the weight)."""
    if isinstance(layer, nn.Conv1d):  # a Conv1d is a Conv2d of height 1
        def one(t: tuple[int, ...]) -> tuple[int, int]:
            return 1, t[0]

        return F.unfold(x.unsqueeze(2), one(layer.kernel_size), dilation=one(layer.dilation),
                        padding=(0, _padding(layer)[0]), stride=one(layer.stride))
    return F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=_padding(layer), stride=layer.stride)


def input_rows(layer: nn.Module, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """``layer``'s input ``x`` as float64 rows per group, ``[groups, n, k]`` with ``k`` the inputs of one output
    (rows: samples, times output positions for a Conv; ``positions``: only those flat output positions)."""
    if isinstance(layer, CONVS):
        cols = im2col(layer, x)  # [N, K, L]
        if positions is not None:
            cols = cols[:, :, positions]
        x = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        x = x.reshape(-1, x.shape[-1])
    g = groups(layer)
    return x.double().reshape(x.shape[0], g, x.shape[1] // g).transpose(0, 1)
