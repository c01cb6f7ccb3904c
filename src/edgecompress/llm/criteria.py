"""Which weights of a Linear projection to zero, and how the survivors change: magnitude, Wanda and SparseGPT, each
unstructured (a sparsity) or N:M (N zeros in every M consecutive inputs of a row).

- ``magnitude``: the smallest ``|W|`` of the whole matrix (the baseline of the Wanda paper).
- ``wanda`` (Sun et al., ICLR 2024): score ``|W_ij| * ||X_j||_2``, the smallest per output row.
- ``sparsegpt`` (Frantar & Alistarh, ICML 2023): optimal-brain-surgeon pruning with the Hessian ``X^T X`` of the
  layer-output error, column by column in blocks of 128: each block picks its mask by ``w^2 / [H^-1]_jj^2`` and
  every pruned weight's error is spread over the not-yet-visited columns, as in the reference implementation
  (IST-DASLab/sparsegpt, ``fasterprune``), damping 1% of the mean diagonal.
The column loop runs on one CPU thread: its operations are too small to share, and on a busy 2-core machine
threads waiting for each other made it up to 100x slower than one thread. Written here because the reference
code is research scripts bound to its own model loaders; the Hessian and inverse-Cholesky helpers are shared
with GPTQ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from edgecompress import distributed
from edgecompress.placement import torch_threads
from edgecompress.quant.weights.gptq import _inverse_cholesky

CRITERIA = ("magnitude", "wanda", "sparsegpt")
BLOCK = 128


@dataclass
class InputStats:
    """What one projection's inputs looked like on the calibration tokens: per-feature sums of squares (Wanda,
    outlier ratios) and, when ``hessian``, ``X^T X`` (SparseGPT)."""

    features: int
    hessian: bool = False
    tokens: int = 0
    sumsq: torch.Tensor = field(init=False)
    xtx: torch.Tensor | None = field(init=False)

    def __post_init__(self):
        self.sumsq = torch.zeros(self.features, dtype=torch.float64)
        self.xtx = torch.zeros(self.features, self.features, dtype=torch.float64) if self.hessian else None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.features).float()
        self.sumsq += x.square().sum(0).double().cpu()
        if self.xtx is not None:
            self.xtx += (x.T @ x).double().cpu()
        self.tokens += x.shape[0]

    def reduce(self) -> InputStats:
        """Add the other ranks' sums (data-parallel calibration under torchrun; a no-op in one process)."""
        distributed.all_reduce_sum(*([self.sumsq] if self.xtx is None else [self.sumsq, self.xtx]))
        self.tokens = int(distributed.sum_count(self.tokens))
        return self

    @property
    def norms(self) -> torch.Tensor:
        """``||X_j||_2`` per input feature, over the calibration tokens."""
        return self.sumsq.sqrt()

    def matrix(self) -> torch.Tensor:
        """``H = 2 X^T X / tokens``."""
        assert self.xtx is not None, "collected without the Hessian"
        return 2 * self.xtx / max(self.tokens, 1)


def wanda_scores(w: torch.Tensor, stats: InputStats) -> torch.Tensor:
    """``|W_ij| * ||X_j||_2``."""
    return w.detach().abs().double().cpu() * stats.norms.reshape(1, -1)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True where pruned: the ``n`` lowest scores in every ``m`` consecutive entries of a row."""
    rows, cols = scores.shape
    low = scores.reshape(rows, cols // m, m).topk(n, dim=-1, largest=False).indices
    mask = torch.zeros(rows, cols // m, m, dtype=torch.bool, device=scores.device)
    mask.scatter_(2, low, True)
    return mask.reshape(rows, cols)


def _lowest(scores: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """True where pruned: the ``sparsity`` share of lowest scores, per row or over the whole matrix."""
    if per_row:
        k = int(scores.shape[1] * sparsity)
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask.scatter_(1, scores.argsort(dim=1)[:, :k], True)
        return mask
    k = int(scores.numel() * sparsity)
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[scores.flatten().argsort()[:k]] = True
    return mask.reshape(scores.shape)


def score_prune(w: torch.Tensor, scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None,
                per_row: bool) -> torch.Tensor:
    """``w`` with the lowest-scoring weights zeroed (unstructured at ``sparsity``, or N:M)."""
    mask = nm_mask(scores, *nm) if nm else _lowest(scores, sparsity, per_row)
    return w.masked_fill(mask.to(w.device), 0)


def sparsegpt(w: torch.Tensor, h: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None,
              damp: float = 0.01, block: int = BLOCK) -> torch.Tensor:
    """SparseGPT-prune ``w`` ``[rows, K]`` against the Hessian ``h`` ``[K, K]`` (see the module docstring); the
    pruned and updated weight, in ``w``'s dtype and device."""
    if w.device.type != "cpu":
        return _sparsegpt(w, h, sparsity, nm, damp, block)
    with torch_threads(1):  # see the module docstring
        return _sparsegpt(w, h, sparsity, nm, damp, block)


def _sparsegpt(w: torch.Tensor, h: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, damp: float,
               block: int) -> torch.Tensor:
    W, H = w.detach().float().clone(), h.double().cpu().clone()
    rows, cols = W.shape
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead.to(W.device)] = 0
    # inverted in float64 on the CPU; the updates run in float32 on the weight's device, as in the reference
    hinv = _inverse_cholesky(H, damp)[0].float().to(W.device)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, h1 = W[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err = torch.zeros_like(w1)
        d = h1.diagonal()
        mask = torch.zeros_like(w1, dtype=torch.bool)
        if nm is None:
            mask = _lowest(w1.square() / d.square().reshape(1, -1), sparsity, per_row=False)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                part = w1[:, i:i + nm[1]].square() / d[i:i + nm[1]].square().reshape(1, -1)
                mask[:, i:i + nm[1]] = nm_mask(part, *nm)
            col = w1[:, i]
            q = col.masked_fill(mask[:, i], 0)
            e = (col - q) / h1[i, i]
            w1[:, i:].sub_(torch.outer(e, h1[i, i:]))
            w1[:, i] = q
            err[:, i] = e
        W[:, i1:i2] = w1
        W[:, i2:] -= err @ hinv[i1:i2, i2:]
    return W.to(w.dtype)


def prune_weight(w: torch.Tensor, stats: InputStats | None, criterion: str, sparsity: float,
                 nm: tuple[int, int] | None = None, damp: float = 0.01) -> torch.Tensor:
    """The pruned weight of a projection by ``criterion`` (one of :data:`CRITERIA`; ``magnitude`` needs no
    ``stats``)."""
    if criterion == "sparsegpt":
        return sparsegpt(w, stats.matrix(), sparsity, nm, damp)
    if criterion == "wanda":
        return score_prune(w, wanda_scores(w, stats), sparsity, nm, per_row=True)
    return score_prune(w, w.detach().abs().double().cpu(), sparsity, nm, per_row=False)


def outlier_ratio(scores: torch.Tensor, m: float) -> float:
    """Share of scores above ``m`` times their mean (OWL's layerwise outlier distribution)."""
    return float((scores > m * scores.mean()).double().mean())
