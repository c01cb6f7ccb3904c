"""GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
ICLR 2023): quantize a layer's weight column by column and spread each column's rounding error over the
not-yet-quantized columns through the inverse Hessian ``H = 2 X^T X`` of the layer-output error.

As in the reference implementation (IST-DASLab/gptq): ``H`` is dampened by ``damp * mean(diag H)``, dead
inputs (zero diagonal) are zeroed, the upper Cholesky factor of ``H^-1`` drives the updates, columns are
processed in lazy blocks of 128 (errors applied to the rest of the matrix once per block), and ``act_order``
visits columns by decreasing ``diag H``. Group scales are taken when a group's first column is reached, from
the columns as already updated by earlier errors; with ``act_order`` they are taken up front from the
original weights (the reference's ``static_groups``), so that each group stays a contiguous block of columns
that ONNX blocked quantization can store. One difference: blocks are a multiple of the group size, so a
group never straddles two blocks and its scale sees every earlier update (the reference reads the
not-yet-updated copy inside a block).

Written here because the libraries that implement GPTQ (auto-gptq, gptqmodel, llm-compressor) target
transformer Linear layers on GPUs; this one takes any ``[rows, K]`` view, including Conv im2col layouts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgecompress import distributed
from edgecompress.nn import im2col
from edgecompress.quant.weights.quantizer import QuantizedWeight, QuantSpec, group_params, quantize_codes

BLOCK = 128  # lazy-batch width of the reference implementation


class Hessian:
    """Accumulates ``X^T X`` of a Conv/Linear layer's inputs, one ``[k, k]`` matrix per conv group
    (rows of ``X``: samples, times output positions for a Conv in its im2col view)."""

    def __init__(self, layer: nn.Module):
        self.layer = layer
        self.groups = im2col.groups(layer)
        self.k = layer.weight[0].numel()
        self.xtx = torch.zeros(self.groups, self.k, self.k, dtype=torch.float64)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        """Add one batch of the layer's inputs."""
        x = im2col.input_rows(self.layer, x)  # [G, n, k]
        self.xtx += x.transpose(1, 2) @ x
        self.rows += x.shape[1]

    def reduce(self) -> Hessian:
        """Add the other ranks' sums (data-parallel calibration under torchrun; a no-op in one process)."""
        distributed.all_reduce_sum(self.xtx)
        self.rows = int(distributed.sum_count(self.rows))
        return self

    def matrix(self, group: int) -> torch.Tensor:
        """``H = 2 X^T X / rows`` of one conv group."""
        return 2 * self.xtx[group] / max(self.rows, 1)


def _inverse_cholesky(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of ``(H + lam I)^-1``, ``lam = damp * mean(diag H)``; ``damp`` is raised x10 (up to
    three times) while the dampened matrix is not positive definite. Returns the factor and the damping used."""
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    mean = float(h.diagonal().mean())
    for _ in range(4):
        lower, info = torch.linalg.cholesky_ex(h + damp * mean * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(inverse, upper=True), damp
        damp *= 10
    raise torch.linalg.LinAlgError(f"the layer's Hessian is not positive definite even with damping {damp / 10}")


def gptq(w: torch.Tensor, h: torch.Tensor, spec: QuantSpec, damp: float = 0.01, act_order: bool = False,
         keep_zeros: bool = False) -> tuple[QuantizedWeight, float]:
    """GPTQ-quantize ``w`` ``[rows, K]`` against the Hessian ``h`` ``[K, K]``. Returns the codes/scales and the
    damping that was needed. ``keep_zeros``: the zero weights of ``w`` get the code of zero and their rounding
    error (all of the updated weight) is spread like any other (SparseGPT's joint pruning and quantization)."""
    W, H = w.detach().double().clone(), h.double().clone()
    pruned = W == 0 if keep_zeros else None
    rows, k = W.shape
    g = spec.group(k)
    n_groups = math.ceil(k / g)
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    scale = W.new_ones(rows, n_groups)
    zero = None if spec.symmetric else W.new_zeros(rows, n_groups)
    upfront = act_order or n_groups == 1
    if upfront:
        for j in range(n_groups):
            s, z = group_params(W[:, j * g:(j + 1) * g], spec)
            scale[:, j] = s
            if zero is not None:
                zero[:, j] = z
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else torch.arange(k)
    W, H = W[:, perm], H[perm][:, perm]
    pruned = None if pruned is None else pruned[:, perm]
    Hinv, damp = _inverse_cholesky(H, damp)
    codes = torch.zeros_like(W)
    block = BLOCK if g >= k else g * max(1, BLOCK // g)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        err = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            j = col // g
            if not upfront and col % g == 0:
                s, z = group_params(W1[:, i:i + g], spec)
                scale[:, j] = s
                if zero is not None:
                    zero[:, j] = z
            z = None if zero is None else zero[:, j]
            q = quantize_codes(W1[:, i], scale[:, j], z, spec)
            if pruned is not None:
                q = torch.where(pruned[:, i1 + i], 0 if z is None else z, q)
            codes[:, i1 + i] = q
            deq = (q - (0 if z is None else z)) * scale[:, j]
            e = (W1[:, i] - deq) / Hinv1[i, i]
            W1[:, i:] -= e[:, None] * Hinv1[i, i:][None, :]
            err[:, i] = e
        W[:, i2:] -= err @ Hinv[i1:i2, i2:]
    codes = codes[:, torch.argsort(perm)]
    result = QuantizedWeight(codes.to(torch.int8), scale.float(), None if zero is None else zero.to(torch.int8), spec)
    return result, damp
