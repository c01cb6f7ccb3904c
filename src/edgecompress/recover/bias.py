"""``recover.bias``: bias correction only — shift each pruned network layer's per-channel output mean back to
the dense layer's, on unlabeled inputs (Nagel et al. 2019's bias correction, applied to pruning error)."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from edgecompress.context import StageContext
from edgecompress.nn.capture import bn_after, forward_order
from edgecompress.nn.layers import weight_layers
from edgecompress.nn.sequential import LayerBatch, run_sequential
from edgecompress.recover.calib import CalibConfig, calibration_inputs
from edgecompress.recover.lstsq import unsupported
from edgecompress.registry import CPU_AND_CUDA, register

STAGE = "recover.bias"


class BiasConfig(CalibConfig):
    """Settings of ``recover.bias``."""


def shift_output(model: nn.Module, name: str, delta: torch.Tensor, bn: str | None) -> str | None:
    """Add ``delta`` to layer ``name``'s per-channel output: into its bias, or, for a layer without bias whose
    output goes straight into BatchNorm ``bn``, into that BatchNorm's running mean (``mean -= delta``).
    Returns where the shift went (None: nowhere to put it)."""
    layer = model.get_submodule(name)
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias += delta.to(layer.bias.dtype)
            return "bias"
        if bn is not None:
            model.get_submodule(bn).running_mean -= delta.to(layer.weight.dtype)
            return f"running mean of {bn}"
    return None


def changed_layers(model: nn.Module, dense: nn.Module) -> list[str]:
    """Conv/Linear layers of ``model`` that differ from the same-named layer of ``dense`` (pruned, re-shaped
    or re-weighted), or that have no counterpart there."""
    reference = weight_layers(dense)
    changed = []
    for name, m in weight_layers(model).items():
        d = reference.get(name)
        if d is None or d.weight.shape != m.weight.shape or not torch.equal(d.weight, m.weight):
            changed.append(name)
    return changed


def nothing_to_do(model: nn.Module, dense: nn.Module, ctx: StageContext, where: str) -> bool:
    """True (with a warning, recorded in ``ctx.info``) when no Conv/Linear layer differs from the dense model."""
    if changed_layers(model, dense):
        return False
    message = f"{where}: no layer differs from the dense model (nothing was pruned): the model is returned unchanged"
    warnings.warn(message, stacklevel=3)
    ctx.info.update({"warning": message, "recovery_flops": 0, "labels_used": 0, "samples_used": 0})
    return True


def channel_mean(y: torch.Tensor) -> torch.Tensor:
    """Per-channel sum over everything but dim 1 (Linear outputs: the last dim), in float64."""
    y = y.double()
    return y.reshape(-1, y.shape[-1]).sum(0) if y.dim() == 2 else y.transpose(0, 1).reshape(y.shape[1], -1).sum(1)


@register(STAGE, BiasConfig, devices=CPU_AND_CUDA)
def recover_bias(model: nn.Module, config: BiasConfig, ctx: StageContext) -> nn.Module:
    """Bias correction only: match each layer's per-channel mean output to the dense model's (no labels).

    Layers are corrected in forward order, each seeing the already-corrected layers before it. A layer
    without bias gets the shift in the running mean of the BatchNorm that follows it; layers with neither
    are listed as skipped. Weights are not changed.
    """
    dense = ctx.require_teacher(STAGE).eval()
    model = copy.deepcopy(model).eval()
    if nothing_to_do(model, dense, ctx, STAGE):
        return model
    x, source = calibration_inputs(config, ctx, dense, STAGE)
    order, shared = forward_order(model, x)
    pairs, dense_layers = bn_after(model, x), dict(dense.named_modules())
    skipped = {n: "called more than once per forward pass" for n in shared}
    for name in order:
        reason = skipped.get(name) or unsupported(model.get_submodule(name), dense_layers.get(name))
        if reason is None and model.get_submodule(name).bias is None and name not in pairs:
            reason = "no bias and no BatchNorm right after it: nowhere to put the correction"
        if reason:
            skipped[name] = reason
    sums: dict[str, tuple] = {}  # per layer: summed per-channel (dense - pruned) outputs, outputs per channel
    corrected = {}

    def observe(name: str, batch: LayerBatch) -> None:
        total, count = sums.get(name, (0.0, 0))
        y = batch.reference
        sums[name] = (total + channel_mean(y) - channel_mean(batch.output),
                      count + y.numel() // y.shape[-1 if y.dim() == 2 else 1])

    def apply(name: str) -> None:
        total, count = sums.pop(name)
        delta = total / count
        corrected[name] = {"into": shift_output(model, name, delta, pairs.get(name)),
                           "mean_abs_shift": float(delta.abs().mean())}

    todo = [n for n in order if n not in skipped]
    run = run_sequential(model, x, todo, observe=observe, apply=apply, reference=dense, outputs=True,
                         batch_size=config.batch_size)
    flops = source["flops"] + run.forward_flops
    ctx.info.update({
        "corrected": corrected, "skipped": skipped, "data": source["data"], "samples_used": len(x),
        "labels_used": 0, "recovery_flops": flops, "synthesis_flops": source["flops"],
    })
    return model
