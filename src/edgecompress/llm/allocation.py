"""How much of each projection to prune for a target sparsity: ``uniform``, ``owl`` (per layer) or ``mosaic``
(per projection).

OWL (Yin et al., ICML 2024) and Mosaic (Eccles et al., FGCS 2026) prune less where the Wanda scores
``|W| * ||X||`` have more outliers: the outlier ratio of a group of weights is the share of its scores above
``m`` times their mean (OWL: all projections of a layer together; Mosaic: each projection on its own). The
ratios are min-max normalised to ``[0, 2 * lambda]`` and the densities are ``norm - mean(norm) + (1 - target)``,
clipped to ``[0.01, 1]``. One difference from the public code: ``mean`` is weighted by the weights each group
holds (and the clipped densities are shifted back to that mean), so every allocation removes the same number of
weights as ``uniform``; OWL's groups are equal-sized layers, where the two are the same.
"""

from __future__ import annotations

import numpy as np

ALLOCATIONS = ("uniform", "owl", "mosaic")
FLOOR = 0.01


def densities(ratios: np.ndarray, sizes: np.ndarray, target: float, lam: float) -> np.ndarray:
    """Per-group densities (1 - sparsity) from outlier ratios (see the module docstring)."""
    ratios, weight = np.asarray(ratios, float), np.asarray(sizes, float) / np.sum(sizes)
    spread = ratios.max() - ratios.min()
    norm = (ratios - ratios.min()) / spread * 2 * lam if spread > 0 else np.zeros_like(ratios)
    base = norm - weight @ norm
    lo, hi = -1.0, 1.0  # shift so the clipped densities hold (1 - target) of the weights
    for _ in range(60):
        shift = (lo + hi) / 2
        if weight @ np.clip(base + shift + 1 - target, FLOOR, 1) < 1 - target:
            lo = shift
        else:
            hi = shift
    return np.clip(base + (lo + hi) / 2 + 1 - target, FLOOR, 1)


def allocate(method: str, target: float, sizes: dict[tuple[int, str], int], layer_ratios: dict[int, float],
             projection_ratios: dict[tuple[int, str], float], lam: float) -> dict[tuple[int, str], float]:
    """Sparsity per (layer, role) of the projections ``sizes`` (their weight counts)."""
    keys = list(sizes)
    if method == "uniform":
        return {k: target for k in keys}
    if method == "owl":
        layers = sorted(layer_ratios)
        size = [sum(sizes[k] for k in keys if k[0] == i) for i in layers]
        dens = dict(zip(layers, densities(np.array([layer_ratios[i] for i in layers]), np.array(size), target, lam)))
        return {k: 1 - float(dens[k[0]]) for k in keys}
    dens = densities(np.array([projection_ratios[k] for k in keys]), np.array([sizes[k] for k in keys]), target, lam)
    return {k: 1 - float(d) for k, d in zip(keys, dens)}
