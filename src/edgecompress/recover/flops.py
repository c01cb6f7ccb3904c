"""FLOP accounting of accuracy recovery: what a recovery method spends, in floating-point operations.

Conventions (one multiply-accumulate = 2 FLOPs; forward MACs from :func:`edgecompress.measure.count_macs`,
which counts convolutions and matrix products only — normalisation and activations are not counted, for
every method alike, so ratios between methods are fair):

* forward pass of a model: ``2 * macs * samples``; the layer-by-layer passes of ``recover.mimic`` and
  ``recover.bias`` are counted as they run (:mod:`edgecompress.nn.sequential`, Conv/Linear calls, 2 per MAC);
* training (forward + backward): ``3 * forward`` per sample and epoch (backward ~ 2x forward);
* Gram accumulation ``X^T X`` of an ``n x k`` matrix: ``2 n k^2`` (no use of symmetry); ``X^T Y`` with ``m``
  targets: ``2 n k m``;
* one damped normal-equation solve of size ``k`` with one right-hand side: Cholesky ``k^3 / 3`` plus two
  triangular solves ``2 k^2``.
"""

from __future__ import annotations


def forward_flops(macs: int, samples: int) -> int:
    """FLOPs of ``samples`` forward passes of a model (or model prefix) with ``macs`` MACs per sample."""
    return 2 * macs * samples


def training_flops(macs: int, samples: int, epochs: int = 1) -> int:
    """FLOPs of training: forward + backward ~ 3 forward passes per sample and epoch."""
    return 3 * forward_flops(macs, samples) * epochs


def gram_flops(n: int, k: int, m: int = 0) -> int:
    """FLOPs of accumulating ``X^T X`` (X: n x k) and, with ``m`` targets, ``X^T Y`` (Y: n x m)."""
    return 2 * n * k * k + 2 * n * k * m


def solve_flops(k: int) -> int:
    """FLOPs of one ``k x k`` Cholesky factorisation plus forward and back substitution (one right-hand side)."""
    return k**3 // 3 + 2 * k * k
