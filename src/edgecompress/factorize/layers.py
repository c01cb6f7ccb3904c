"""Factorized layers and the decompositions that initialise them from a trained layer's weights.

- :class:`LowRankLinear`: ``W (out x in) ~ A (out x r) B (r x in)``, truncated SVD (Eckart-Young: the best rank-r
  approximation in the Frobenius norm): a Linear in -> r then r -> out.
- :class:`FactorizedConv2d`, three ways to split a ``k x k`` convolution (groups 1):
  ``channel``: SVD of the weight as an ``out x (in k k)`` matrix: a ``k x k`` conv in -> r, then 1x1 r -> out;
  ``spatial``: SVD of the weight as an ``(in kh) x (out kw)`` matrix (Jaderberg et al. 2014, scheme 2): a
  ``kh x 1`` conv in -> r, then ``1 x kw`` r -> out;
  ``tucker2``: Tucker-2 by higher-order SVD of the two channel modes (Kim et al. 2016): 1x1 in -> r_in,
  ``k x k`` core r_in -> r_out, 1x1 r_out -> out.
- :class:`SeparableConv2d`: a depthwise ``k x k`` conv with ``multiplier`` filters per input channel, then 1x1;
  from a rank-``multiplier`` SVD of each input channel's ``out x (k k)`` slice. ``multiplier = k*k`` is exact.

Each module is a ``nn.Sequential`` of standard layers (so every exporter and runtime runs it) that a checkpoint
rebuilds from its ``spec()``. Written here because torch has no layer decompositions and tensorly's Tucker is an
iterative solver where the closed-form truncated SVD is all that is needed.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.nn.rebuild import rebuildable


def svd_split(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A @ B`` the best rank-``rank`` approximation of ``matrix``; sqrt(S) goes to each side.
    A rank above the matrix's smaller side is padded with zero columns/rows (the product stays exact)."""
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    a, b = u[:, :rank] * root, root[:, None] * vh[:rank]
    pad = rank - len(root)
    if pad > 0:
        a = torch.cat([a, a.new_zeros(a.shape[0], pad)], 1)
        b = torch.cat([b, b.new_zeros(pad, b.shape[1])])
    return a.float(), b.float()


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(matrix.detach().double())


def energy_rank(values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep ``energy`` of the total squared sum (at least 1)."""
    share = (values**2).cumsum(0) / (values**2).sum().clamp_min(1e-30)
    return min(int((share < energy - 1e-12).sum()) + 1, len(values))


@rebuildable
class LowRankLinear(nn.Sequential):
    """``Linear(in, rank, bias=False)`` then ``Linear(rank, out)``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__(nn.Linear(in_features, rank, bias=False), nn.Linear(rank, out_features, bias=bias))
        self._spec = {"in_features": in_features, "out_features": out_features, "rank": rank, "bias": bias}

    def spec(self) -> dict:
        return dict(self._spec)

    @classmethod
    def of(cls, layer: nn.Linear, rank: int) -> LowRankLinear:
        new = cls(layer.in_features, layer.out_features, rank, layer.bias is not None).to(layer.weight.device)
        a, b = svd_split(layer.weight, rank)
        with torch.no_grad():
            new[0].weight.copy_(b)
            new[1].weight.copy_(a)
            if layer.bias is not None:
                new[1].bias.copy_(layer.bias)
        return new


def _conv_kwargs(conv: nn.Conv2d) -> dict:
    return {"in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel_size": list(conv.kernel_size),
            "stride": list(conv.stride), "padding": list(conv.padding), "dilation": list(conv.dilation),
            "bias": conv.bias is not None}


def spatial_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The ``(in kh) x (out kw)`` matrix of a conv weight whose SVD gives the vertical and horizontal filters."""
    out, cin, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(cin * kh, out * kw)


def channel_modes(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The output-channel and input-channel unfoldings of a conv weight (Tucker-2's two modes)."""
    return weight.flatten(1), weight.transpose(0, 1).flatten(1)


@rebuildable
class FactorizedConv2d(nn.Sequential):
    """A ``Conv2d`` (groups 1) split into two or three convolutions; ``ranks``: ``[r]`` or, for tucker2,
    ``[r_in, r_out]``."""

    def __init__(self, mode: str, in_channels: int, out_channels: int, kernel_size: list[int], stride: list[int],
                 padding: list[int], dilation: list[int], bias: bool, ranks: list[int]):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
        if mode == "channel":
            layers = [nn.Conv2d(in_channels, ranks[0], (kh, kw), (sh, sw), (ph, pw), (dh, dw), bias=False),
                      nn.Conv2d(ranks[0], out_channels, 1, bias=bias)]
        elif mode == "spatial":
            layers = [nn.Conv2d(in_channels, ranks[0], (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False),
                      nn.Conv2d(ranks[0], out_channels, (1, kw), (1, sw), (0, pw), (1, dw), bias=bias)]
        elif mode == "tucker2":
            layers = [nn.Conv2d(in_channels, ranks[0], 1, bias=False),
                      nn.Conv2d(ranks[0], ranks[1], (kh, kw), (sh, sw), (ph, pw), (dh, dw), bias=False),
                      nn.Conv2d(ranks[1], out_channels, 1, bias=bias)]
        else:
            raise ValueError(f"unknown conv factorization {mode!r}: use channel, spatial or tucker2")
        super().__init__(*layers)
        self._spec = {"mode": mode, "in_channels": in_channels, "out_channels": out_channels,
                      "kernel_size": list(kernel_size), "stride": list(stride), "padding": list(padding),
                      "dilation": list(dilation), "bias": bias, "ranks": list(ranks)}

    def spec(self) -> dict:
        return dict(self._spec)

    @classmethod
    def of(cls, conv: nn.Conv2d, mode: str, ranks: list[int]) -> FactorizedConv2d:
        new = cls(mode, **_conv_kwargs(conv), ranks=ranks).to(conv.weight.device)
        w = conv.weight.detach()
        out, cin, kh, kw = w.shape
        with torch.no_grad():
            if mode == "channel":
                a, b = svd_split(w.flatten(1), ranks[0])
                weights = [b.reshape(ranks[0], cin, kh, kw), a[:, :, None, None]]
            elif mode == "spatial":
                v, h = svd_split(spatial_matrix(w), ranks[0])
                weights = [v.T.reshape(ranks[0], cin, kh, 1), h.reshape(ranks[0], out, kw).permute(1, 0, 2)[:, :, None]]
            else:
                u_out = torch.linalg.svd(channel_modes(w)[0].double(), full_matrices=False)[0][:, :ranks[1]].float()
                u_in = torch.linalg.svd(channel_modes(w)[1].double(), full_matrices=False)[0][:, :ranks[0]].float()
                core = torch.einsum("oihw,or,is->rshw", w, u_out, u_in)
                weights = [u_in.T[:, :, None, None], core, u_out[:, :, None, None]]
            for layer, weight in zip(new, weights, strict=True):
                layer.weight.copy_(weight)
            if conv.bias is not None:
                new[-1].bias.copy_(conv.bias)
        return new


@rebuildable
class SeparableConv2d(nn.Sequential):
    """Depthwise ``k x k`` conv (``multiplier`` filters per input channel) then a 1x1 pointwise conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: list[int], stride: list[int],
                 padding: list[int], dilation: list[int], bias: bool, multiplier: int):
        mid = in_channels * multiplier
        super().__init__(nn.Conv2d(in_channels, mid, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation),
                                   groups=in_channels, bias=False),
                         nn.Conv2d(mid, out_channels, 1, bias=bias))
        self._spec = {"in_channels": in_channels, "out_channels": out_channels, "kernel_size": list(kernel_size),
                      "stride": list(stride), "padding": list(padding), "dilation": list(dilation), "bias": bias,
                      "multiplier": multiplier}

    def spec(self) -> dict:
        return dict(self._spec)

    def dense_weight(self) -> torch.Tensor:
        """The standard convolution's weight this pair computes: ``W[o, i] = sum_m P[o, i m] D[i m]``."""
        depthwise, pointwise = self[0].weight.detach(), self[1].weight.detach()
        cin, m = self._spec["in_channels"], self._spec["multiplier"]
        kh, kw = depthwise.shape[-2:]
        return torch.einsum("oim,imk->oik", pointwise.reshape(-1, cin, m),
                            depthwise.reshape(cin, m, kh * kw)).reshape(-1, cin, kh, kw)

    @classmethod
    def of(cls, conv: nn.Conv2d, multiplier: int) -> SeparableConv2d:
        new = cls(**_conv_kwargs(conv), multiplier=multiplier).to(conv.weight.device)
        w = conv.weight.detach()
        out, cin, kh, kw = w.shape
        with torch.no_grad():
            # per input channel i: W[:, i] (out x kh kw) ~ P_i (out x m) D_i (m x kh kw)
            p, d = zip(*(svd_split(w[:, i].reshape(out, kh * kw), multiplier) for i in range(cin)), strict=True)
            new[0].weight.copy_(torch.cat(d).reshape(cin * multiplier, 1, kh, kw))
            new[1].weight.copy_(torch.cat(p, dim=1)[:, :, None, None])
            if conv.bias is not None:
                new[1].bias.copy_(conv.bias)
        return new
