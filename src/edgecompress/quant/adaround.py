"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"): learned weight
rounding, layer by layer, through the sequential engine (:func:`edgecompress.nn.sequential.run_sequential`).

For each Conv/Linear layer in forward order (BatchNorm already folded), on unlabeled calibration inputs: the
layer's input comes from the model whose earlier layers are already rounded (so their error is compensated), its
target is the float layer's output on the float model's activations. Each weight may round down or up:
``w_q = s * clamp(floor(w / s) + h(V), qmin, qmax)`` with the rectified sigmoid ``h``; ``V`` is trained with Adam on
the output's squared error (relative to nearest rounding's) plus the annealed regulariser ``sum(1 - |2h(V) - 1|^beta)`` that drives ``h`` to 0 or 1,
then fixed to the hard rounding. The weights are written back on the integer grid of the deployment quantizer
(scales from ``scales``), so quantizing them again gives exactly the learned integers. Shortcuts against the
paper: the loss is on the pre-activation output, ``steps`` (default 300) is far below its 10-20k iterations, and
with ``window`` each step sees a random spatial patch of the output maps (the backward pass over whole maps of
early layers dominated the time).
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


def _layer_out(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, padded: bool = False) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    if padded:
        return F.conv2d(x, weight, layer.bias, layer.stride, 0, layer.dilation, layer.groups)
    return layer._conv_forward(x, weight, layer.bias)


def _window(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, size: int, gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """A random ``size`` x ``size`` window of a Conv2d's output maps ``y`` and the zero-padded input window that
    produces it (True: ``x`` is padded), or the whole maps where the layer is not a zero-padded Conv2d or its maps
    are no larger than the window."""
    if (not size or not isinstance(layer, nn.Conv2d) or isinstance(layer.padding, str)
            or layer.padding_mode != "zeros" or max(y.shape[-2:]) <= size):
        return x, y, False
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = layer.padding, layer.stride, layer.dilation, layer.kernel_size
    h, w = min(size, y.shape[-2]), min(size, y.shape[-1])
    i = int(torch.randint(y.shape[-2] - h + 1, (1,), generator=gen))
    j = int(torch.randint(y.shape[-1] - w + 1, (1,), generator=gen))
    x = F.pad(x, (pw, pw, ph, ph))
    x = x[..., i * sh: i * sh + (h - 1) * sh + dh * (kh - 1) + 1, j * sw: j * sw + (w - 1) * sw + dw * (kw - 1) + 1]
    return x, y[..., i:i + h, j:j + w], True


def round_layer(layer: nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor], scales: Scales,
                steps: int, batch: int, gen: torch.Generator, window: int = 0) -> dict[str, float]:
    """Learn the rounding of ``layer.weight`` (in place, left on the quantizer's grid) so that the layer maps
    ``inputs`` to ``targets``; returns the output MSE of nearest rounding and of the learned one. ``window``: each
    step fits a random ``window`` x ``window`` patch of the output maps (and the input patch under it) of ``batch``
    samples instead of the whole maps (0: whole maps): the error is still measured on the whole maps."""
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
        xs, ys, padded = _window(layer, x[pick], y[pick], window, gen)
        loss = F.mse_loss(_layer_out(layer, xs, weight(_h(v)), padded), ys) / max(nearest, 1e-30)
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
             steps: int, batch: int = 16, seed: int = 0, window: int = 0) -> dict:
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
        report[name] = round_layer(model.get_submodule(name), inputs, targets, scales, steps, batch, gen, window)

    run = run_sequential(model, calib, layers, observe=observe, apply=apply, reference=reference, batch_size=32)
    return {"layers": report, "steps": steps, "window": window, "engine_forward_flops": run.forward_flops,
            "variant": "AdaRound (Nagel et al. 2020), layer-wise, pre-activation loss, shortened schedule"}
