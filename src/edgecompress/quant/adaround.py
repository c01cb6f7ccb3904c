"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"): learned weight
rounding, layer by layer, through the sequential engine (:func:`edgecompress.nn.sequential.run_sequential`).

For each Conv/Linear layer in forward order (BatchNorm already folded), on unlabeled calibration inputs: the
layer's input comes from the model whose earlier layers are already rounded (so their error is compensated), its
target is the float layer's output on the float model's activations. Each weight may round down or up:
``w_q = s * clamp(floor(w / s) + h(V), qmin, qmax)`` with the rectified sigmoid ``h``; ``V`` is trained with Adam on
the output's squared error (relative to nearest rounding's) plus the annealed regulariser ``sum(1 - |2h(V) - 1|^beta)`` that drives ``h`` to 0 or 1,
then fixed to the hard rounding. The weights are written back on the integer grid of the deployment quantizer
(scales from ``scales``), so quantizing them again gives exactly the learned integers. Shortcuts against the
paper: the loss is on the pre-activation output, and ``steps`` (default 300) is far below its 10-20k iterations.
Each row's largest-magnitude weight keeps its value, so the per-channel scale the quantizer derives stays the same.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from edgecompress.nn.sequential import LayerBatch, run_sequential

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (the paper's values)
# The output error is measured relative to nearest rounding's, the regulariser as a mean over weights, and the
# schedule is short, so regulariser weight and learning rate differ from the paper's 0.01 and 1e-3 (10k+ steps):
# these values were best on a conv layer with correlated inputs (tests/test_adaround.py).
REG_WEIGHT, LR = 3.0, 0.1
BETA = (20.0, 2.0)  # the regulariser's exponent, annealed from 20 to 2 after a 20% warm-up
# w -> (per-row scale [rows], qmin, qmax) of the deployment quantizer; rows: output channels (or 1: per tensor)
Scales = Callable[[torch.Tensor], tuple[torch.Tensor, int, int]]


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def _layer_out(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight, layer.bias) if isinstance(layer, nn.Linear) else layer._conv_forward(x, weight, layer.bias)


def round_layer(layer: nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor], scales: Scales,
                steps: int, batch: int, gen: torch.Generator) -> dict[str, float]:
    """Learn the rounding of ``layer.weight`` (in place, left on the quantizer's grid) so that the layer maps
    ``inputs`` to ``targets``; returns the output MSE of nearest rounding and of the learned one."""
    w = layer.weight.detach()
    s, qmin, qmax = scales(w)
    rows = w.reshape(s.numel(), -1)
    s = s.reshape(-1, 1).to(w.dtype).clamp_min(torch.finfo(w.dtype).tiny)
    base = torch.floor(rows / s)
    frac = (rows / s - base).clamp(0.01, 0.99)
    v = nn.Parameter(-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1))  # h(v) = frac at the start
    x, y = torch.cat(inputs), torch.cat(targets)
    keep = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, rows.abs().argmax(1, keepdim=True), True)

    def weight(up: torch.Tensor) -> torch.Tensor:
        q = torch.where(keep, rows / s, torch.clamp(base + up, qmin, qmax))
        return (q * s).reshape(w.shape)

    def error(weight_: torch.Tensor) -> float:
        with torch.no_grad():
            return float(sum(F.mse_loss(_layer_out(layer, a, weight_), b, reduction="sum")
                             for a, b in zip(x.split(64), y.split(64))) / y.numel())

    nearest = error(weight(torch.round(rows / s) - base))
    optimizer = torch.optim.Adam([v], lr=LR)
    warm = int(0.2 * steps)
    for step in range(steps):
        pick = torch.randint(len(x), (min(batch, len(x)),), generator=gen)
        loss = F.mse_loss(_layer_out(layer, x[pick], weight(_h(v))), y[pick]) / max(nearest, 1e-30)
        if step >= warm:
            beta = BETA[1] + (BETA[0] - BETA[1]) * (1 - (step - warm) / max(steps - warm, 1))
            loss = loss + REG_WEIGHT * (1 - (2 * _h(v) - 1).abs().pow(beta)).sum() / v.numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        learned = weight((_h(v) >= 0.5).to(w.dtype))
        layer.weight.copy_(learned)
    return {"mse_nearest": nearest, "mse_learned": error(learned)}


def adaround(model: nn.Module, reference: nn.Module, calib: torch.Tensor, layers: list[str], scales: Scales, *,
             steps: int, batch: int = 16, seed: int = 0) -> dict:
    """Learned rounding of ``layers`` of ``model`` in place (``reference``: the float model, not changed); returns
    the per-layer output errors of nearest and learned rounding and the forward FLOPs of the engine."""
    gen = torch.Generator().manual_seed(seed)
    seen: dict[str, tuple[list, list]] = {}
    report: dict[str, dict[str, float]] = {}

    def observe(name: str, b: LayerBatch) -> None:
        inputs, targets = seen.setdefault(name, ([], []))
        inputs.append(b.input)
        targets.append(b.reference)

    def apply(name: str) -> None:
        inputs, targets = seen.pop(name)
        report[name] = round_layer(model.get_submodule(name), inputs, targets, scales, steps, batch, gen)

    run = run_sequential(model, calib, layers, observe=observe, apply=apply, reference=reference, batch_size=32)
    return {"layers": report, "steps": steps, "engine_forward_flops": run.forward_flops,
            "variant": "AdaRound (Nagel et al. 2020), layer-wise, pre-activation loss, shortened schedule"}
