"""The per-layer solver of ``recover.mimic``: re-solve a layer's surviving weights by least squares
restricted to its sparsity mask, from statistics accumulated over calibration batches.

For a layer with inputs ``X`` (rows: samples, or samples x output positions for a Conv in its im2col view)
and targets ``Y`` it accumulates ``X^T X`` and ``X^T Y`` per group (a grouped or depthwise Conv is one
independent problem per group), so memory is ``O(k^2)`` per layer, never the activations. Each output row
``r`` keeps its zero pattern: with ``S`` its surviving inputs (plus an intercept column when the layer has a
bias to correct), the solve is the damped normal equations

    (A_SS + lam I) w_S = (X^T Y)_S,r + lam w0_S,    A = X^T X,   lam = damping * mean(diag(A_SS)),

i.e. Tikhonov damping toward the current weights ``w0`` (not toward zero), so a badly conditioned or
under-determined row stays close to where it was. Pruned weights stay exactly zero.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from edgecompress.nn import im2col
from edgecompress.recover.flops import gram_flops, solve_flops


def unsupported(layer: nn.Module, dense: nn.Module | None) -> str | None:
    """Why ``layer`` cannot be re-solved against ``dense`` (None when it can)."""
    if dense is None:
        return "no layer of that name in the dense model"
    if type(layer) is not type(dense):
        return f"type differs from the dense layer ({type(layer).__name__} vs {type(dense).__name__})"
    if isinstance(layer, nn.Linear) and layer.out_features != dense.out_features:
        return "output features differ from the dense layer (structured pruning)"
    if isinstance(layer, im2col.CONVS) and (layer.out_channels != dense.out_channels or layer.groups != dense.groups):
        return "output channels or groups differ from the dense layer (structured pruning)"
    return im2col.unsupported(layer)


class MaskedLstsq:
    """Accumulates ``X^T X`` and ``X^T Y`` for one Conv/Linear layer and solves for its surviving weights.

    ``intercept``: also solve for a per-output constant (the bias, or a shift folded into the following BN).
    ``gram_flops`` and ``solve_flops`` count the accumulation and the solves (see :mod:`edgecompress.recover.flops`).
    """

    def __init__(self, layer: nn.Module, intercept: bool):
        self.layer, self.intercept = layer, intercept
        self.groups = im2col.groups(layer)
        out = layer.weight.shape[0]
        self.k = layer.weight[0].numel()  # inputs per output row (one group)
        self.m = out // self.groups
        size = self.k + int(intercept)
        self.xtx = torch.zeros(self.groups, size, size, dtype=torch.float64)
        self.xty = torch.zeros(self.groups, size, self.m, dtype=torch.float64)
        self.rows = 0
        self.gram_flops = 0  # X^T X and X^T Y accumulation
        self.solve_flops = 0

    def add(self, x: torch.Tensor, y: torch.Tensor, positions: torch.Tensor | None = None) -> None:
        """Add one batch: ``x`` the layer's input, ``y`` the target output (shaped like the layer's output).
        ``positions``: for a Conv, the output positions to use (flat indices); ``y`` then holds only those,
        as ``[N, out, len(positions)]``. All positions when None."""
        X = im2col.input_rows(self.layer, x, positions)  # [G, n, k]
        if isinstance(self.layer, im2col.CONVS):
            y = y.reshape(y.shape[0], y.shape[1], -1).transpose(1, 2)  # [N, L, out]
        n = X.shape[1]
        Y = y.double().reshape(n, self.groups, self.m).transpose(0, 1)  # [G, n, m]
        if self.intercept:
            X = torch.cat([X, X.new_ones(self.groups, n, 1)], dim=2)
        self.xtx += X.transpose(1, 2) @ X
        self.xty += X.transpose(1, 2) @ Y
        self.rows += n
        self.gram_flops += self.groups * gram_flops(n, X.shape[2], self.m)

    def solve(self, w0: torch.Tensor, c0: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
        """New (weight, intercept) from the current ``w0`` (layer weight shape; zeros = pruned) and intercept ``c0``.

        ``damping`` is relative to the mean diagonal of each row's system. A row whose system is not positive
        definite is retried with more damping (x10, three times), then solved by least squares."""
        W = w0.detach().reshape(self.groups, self.m, self.k).double()
        C = c0.detach().reshape(self.groups, self.m).double()
        W_new, C_new = W.clone(), C.clone()
        for g in range(self.groups):
            for r in range(self.m):
                keep = torch.nonzero(W[g, r] != 0).flatten()
                if self.intercept:
                    keep = torch.cat([keep, keep.new_tensor([self.k])])
                if keep.numel() == 0:
                    continue
                A = self.xtx[g][keep][:, keep]
                start = torch.cat([W[g, r], C[g, r:r + 1]])[keep]
                lam = damping * float(A.diagonal().mean().clamp_min(1e-12))
                w = self._solve(A, self.xty[g][keep, r], start, lam)
                self.solve_flops += solve_flops(keep.numel())
                if self.intercept:
                    C_new[g, r] = w[-1]
                    w = w[:-1]
                    keep = keep[:-1]
                W_new[g, r, keep] = w
        dtype = w0.dtype
        return W_new.reshape(w0.shape).to(dtype), C_new.reshape(c0.shape).to(dtype)

    @staticmethod
    def _solve(A: torch.Tensor, b: torch.Tensor, start: torch.Tensor, lam: float) -> torch.Tensor:
        """Solve ``(A + lam I) w = b + lam * start``."""
        eye = torch.eye(A.shape[0], dtype=A.dtype)
        floor = 1e-8 * float(A.diagonal().abs().mean().clamp_min(1e-12))
        for _ in range(4):
            L, info = torch.linalg.cholesky_ex(A + lam * eye)
            if int(info) == 0:
                return torch.cholesky_solve((b + lam * start)[:, None], L).flatten()
            lam = max(10 * lam, floor)
        warnings.warn("a row's normal equations are singular: using a least-squares solution", stacklevel=2)
        return torch.linalg.lstsq(A + lam * eye, (b + lam * start)[:, None]).solution.flatten()
