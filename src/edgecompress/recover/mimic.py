"""``recover.mimic``: label-free accuracy recovery after pruning (Neural-Mimicking, edgecompress design —
docs/methods.md §3; the published method's details are not public).

Each pruned layer is made to mimic the dense layer: on unlabeled calibration inputs, layer by layer in forward
order, the pruned network's own propagated inputs ``X`` (so earlier corrections propagate) and the dense
layer's outputs ``Y`` (pre-BatchNorm for a Conv) are the data of a least-squares re-solve of the surviving
weights, restricted to the mask (:mod:`edgecompress.recover.lstsq`). The bias — or, for a layer without bias,
a shift folded into the BatchNorm after it — is solved jointly (the intercept of the fit), which is the bias
correction; optionally (``recalibrate_bn``) BatchNorm statistics are re-estimated. No labels and no backpropagation (data-free mode
only back-propagates to the synthetic inputs, never to weights).

Supported: Conv1d/Conv2d (any stride, padding, dilation; grouped and depthwise per group) and Linear, after
unstructured pruning (same architecture as the dense model) and after structured pruning for layers whose
output size still matches the dense layer of the same name (their inputs may be narrower). Skipped and
listed: layers whose outputs were pruned (structured), other layer types, layers called several times.
Cost shortcuts: Conv rows are sub-sampled (``positions`` random output positions per sample and layer, drawn
up front batch by batch in forward order); the pruned and the dense model run block by block through
:mod:`edgecompress.nn.sequential` (memory: the activations at one block boundary of both models).
"""

from __future__ import annotations

import copy
import warnings

import torch
from pydantic import Field
from torch import nn

from edgecompress.context import StageContext
from edgecompress.measure import count_macs
from edgecompress.nn.bn import bn_layers, reestimate_bn
from edgecompress.nn.capture import bn_after, forward_order, forward_with_hooks
from edgecompress.nn.im2col import CONVS
from edgecompress.nn.sequential import LayerBatch, run_sequential
from edgecompress.recover.bias import changed_layers, nothing_to_do
from edgecompress.recover.calib import CalibConfig, batches, calibration_inputs
from edgecompress.recover.flops import forward_flops
from edgecompress.recover.lstsq import MaskedLstsq, unsupported
from edgecompress.registry import register

STAGE = "recover.mimic"
UNDERDETERMINED_DAMPING = 0.1  # damping used when a layer has fewer calibration rows than unknowns per row


class MimicConfig(CalibConfig):
    """Settings of ``recover.mimic``."""

    damping: float = Field(1e-2, ge=0.0, le=1e3, description="Tikhonov damping of the normal equations, relative "
                                                              "to their mean diagonal (toward the current weights)")
    positions: int = Field(64, ge=0, le=1_000_000, description="Conv layers: random output positions used per "
                                                               "sample (0: all) — bounds the X^T X cost")
    fix_bias: bool = Field(True, description="solve a per-channel intercept jointly (into the bias, or the running "
                                             "mean of the BatchNorm after a bias-free layer)")
    recalibrate_bn: bool = Field(False, description="re-estimate BatchNorm statistics at the end (off: after the "
                                                     "solve the pre-BN outputs match the dense ones; re-estimating "
                                                     "on 128 samples measured worse, benchmarks/results/"
                                                     "mimic_recovery.md)")


def _positions(dense: nn.Module, names: list[str], x: torch.Tensor, count: int, n_batches: int,
               gen: torch.Generator) -> dict[str, list[torch.Tensor | None]]:
    """Per layer and batch, the ``count`` random output positions (flat indices) of a Conv layer whose outputs
    have more (None: all), drawn batch by batch, in forward order within a batch."""
    sizes: dict[str, int] = {}  # output positions per layer, in call order

    def record(_m, _i, y, name):
        sizes[name] = y[0, 0].numel()

    handles = [dense.get_submodule(n).register_forward_hook(lambda m, i, y, n=n: record(m, i, y, n)) for n in names]
    forward_with_hooks(dense, x[:1], handles)
    drawn: dict[str, list] = {n: [] for n in names}
    for _ in range(n_batches):
        for name, size in sizes.items():
            sample = isinstance(dense.get_submodule(name), CONVS) and count and size > count
            drawn[name].append(torch.randperm(size, generator=gen)[:count] if sample else None)
    return drawn


@register(STAGE, MimicConfig)
def recover_mimic(model: nn.Module, config: MimicConfig, ctx: StageContext) -> nn.Module:
    """Label-free recovery: re-solve each pruned layer's surviving weights to mimic the dense layer (least squares).

    Needs the dense model (the teacher: the model as it entered the recipe) and unlabeled inputs — task data or,
    with ``data: synthetic``, inputs synthesised from the dense model's BatchNorm statistics. Pruned weights
    stay zero. Reports the solved and skipped layers, FLOPs spent and data used.
    """
    dense = ctx.require_teacher(STAGE).eval()
    model = copy.deepcopy(model).eval()
    if nothing_to_do(model, dense, ctx, STAGE):
        return model
    pruned = changed_layers(model, dense)
    x, source = calibration_inputs(config, ctx, dense, STAGE)
    order, shared = forward_order(model, x)
    dense_layers = dict(dense.named_modules())
    pairs = bn_after(model, x)
    skipped = {n: "called more than once per forward pass" for n in shared}
    skipped.update({n: why for n in order if n not in skipped
                    and (why := unsupported(model.get_submodule(n), dense_layers.get(n)))})
    todo = [n for n in order if n not in skipped]
    positions = _positions(dense, todo, x, config.positions, len(batches(x, config.batch_size)),
                           torch.Generator().manual_seed(ctx.seed))
    solvers: dict[str, MaskedLstsq] = {}
    solved, warned = {}, []
    flops = {"forward": 0, "gram": 0, "solve": 0, "synthesis": source["flops"]}

    def observe(name: str, batch: LayerBatch) -> None:
        """Add the pruned layer's input and the dense layer's output (the target) at the batch's positions."""
        if name not in solvers:
            layer = model.get_submodule(name)
            solvers[name] = MaskedLstsq(layer, config.fix_bias and (layer.bias is not None or name in pairs))
        where = positions[name][batch.index]
        target = batch.reference if where is None else batch.reference.flatten(2)[:, :, where]
        solvers[name].add(batch.input, target, where)

    def apply(name: str) -> None:
        """Re-solve the layer's surviving weights and intercept from its accumulated statistics."""
        layer, solver = model.get_submodule(name), solvers.pop(name)
        intercept = solver.intercept
        unknowns = int((layer.weight != 0).flatten(1).sum(1).max()) + int(intercept)
        damping = config.damping
        if solver.rows < unknowns:
            damping = max(damping, UNDERDETERMINED_DAMPING)
            warned.append(name)
            warnings.warn(f"{STAGE}: layer {name!r} has {solver.rows} calibration rows for {unknowns} unknowns per "
                          f"output: damping raised to {damping} (give more calib_samples)", stacklevel=2)
        bias = layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.weight.shape[0])
        weight, shift = solver.solve(layer.weight, bias, damping)
        with torch.no_grad():
            layer.weight.copy_(weight * (layer.weight != 0))
            if intercept and layer.bias is not None:
                layer.bias.copy_(shift)
            elif intercept:
                model.get_submodule(pairs[name]).running_mean -= shift
        flops["gram"] += solver.gram_flops
        flops["solve"] += solver.solve_flops
        solved[name] = {"rows": solver.rows, "unknowns_max": unknowns, "damping": damping, "intercept": intercept}

    flops["forward"] = run_sequential(model, x, todo, observe=observe, apply=apply, reference=dense,
                                      batch_size=config.batch_size).forward_flops
    if config.recalibrate_bn and bn_layers(model):
        reestimate_bn(model, batches(x, config.batch_size))
        flops["forward"] += forward_flops(count_macs(model, x[:1]), len(x))
    ctx.add_solve_flops(flops["gram"] + flops["solve"])
    ctx.info.update({
        "solved": solved, "skipped": skipped, "pruned_layers": pruned,
        "underdetermined": warned, "data": source["data"], "samples_used": len(x), "labels_used": 0,
        "backprop": "inputs only (data-free synthesis)" if source["flops"] else "none",
        "recovery_flops": sum(flops.values()), "flops": flops,
        "synthesis": {k: v for k, v in source.items() if k.startswith(("bn_loss", "steps"))},
    })
    return model
