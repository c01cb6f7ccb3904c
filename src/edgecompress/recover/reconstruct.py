"""``recover.block``: label-free block-wise reconstruction after pruning (in the manner of BRECQ's block
reconstruction, Li et al. 2021, applied to pruning error instead of rounding error).

The pruned model and the dense model are cut into the same chain of blocks (:func:`edgecompress.nn.sequential.blocks`:
a residual block stays whole), and consecutive blocks are grouped into *units* that end where the pruned and the
dense activations have the same shape again (so a pruned layer's narrower output is never compared). Unit by unit,
in forward order, on unlabeled calibration inputs: the dense unit's output on the dense model's activations is the
target, and every parameter of the pruned unit (weights, biases, BatchNorm affine; BatchNorm statistics frozen)
takes ``steps`` Adam steps on the mean squared error between the pruned unit's output — on the *pruned* model's
own propagated inputs, so later units correct what earlier ones left — and the target. Pruned (zero) weights stay
zero. Memory: the calibration activations at one unit boundary, three times (pruned inputs, dense inputs, target).
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field
from torch import nn

from edgecompress.context import StageContext
from edgecompress.nn.sequential import blocks
from edgecompress.recover.bias import changed_layers, nothing_to_do
from edgecompress.recover.calib import CalibConfig, batches, calibration_inputs
from edgecompress.registry import CPU_AND_CUDA, register
from edgecompress.train import mask_zeros

STAGE = "recover.block"


class BlockConfig(CalibConfig):
    """Settings of ``recover.block``."""

    steps: int = Field(200, ge=1, le=100_000, description="Adam steps per unit that contains a changed layer")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate")
    step_batch: int = Field(32, ge=1, le=65536, description="calibration samples per Adam step (drawn at random)")


def units(model: nn.Module, dense: nn.Module, x: torch.Tensor) -> list[list[str]]:
    """The chain of blocks of ``model`` grouped so that each group's output has the dense model's shape at the
    same place (``[[""]]``: the whole model, when the two do not run as the same chain)."""
    chain = blocks(model, x)
    if chain == [""] or blocks(dense, x) != chain:
        return [[""]]
    groups, current, h, d = [], [], x.clone(), x.clone()
    with torch.no_grad():
        for name in chain:
            h, d = model.get_submodule(name)(h), dense.get_submodule(name)(d)
            current.append(name)
            if h.shape == d.shape:
                groups.append(current)
                current = []
    return groups + ([current] if current else [])


def _run(model: nn.Module, unit: list[str], h: torch.Tensor) -> torch.Tensor:
    for name in unit:
        h = model.get_submodule(name)(h)
    return h


def _inside(layer: str, unit: list[str]) -> bool:
    return any(not b or layer == b or layer.startswith(b + ".") for b in unit)


@register(STAGE, BlockConfig, devices=CPU_AND_CUDA)
def recover_block(model: nn.Module, config: BlockConfig, ctx: StageContext) -> nn.Module:
    """Label-free block-wise reconstruction: briefly optimise each pruned block to reproduce the dense block's output.

    Needs the dense model (the model as it entered the recipe) and unlabeled inputs. Each unit (residual blocks
    whole) is tuned with Adam on its own propagated inputs against the dense unit's outputs; zero weights stay zero.
    Reports, per unit, the output error before and after, and the steps, data and time spent.
    """
    dense = ctx.require_teacher(STAGE).eval()
    model = copy.deepcopy(model).eval()
    if nothing_to_do(model, dense, ctx, STAGE):
        return model
    x, source = calibration_inputs(config, ctx, dense, STAGE)
    changed = changed_layers(model, dense)
    plan = units(model, dense, x[:2])
    gen = torch.Generator().manual_seed(ctx.seed)
    cache_p, cache_d = batches(x, config.batch_size), batches(x, config.batch_size)
    report = {}
    for unit in plan:
        with torch.no_grad():
            target = [_run(dense, unit, h.clone()) for h in cache_d]
        if any(_inside(layer, unit) for layer in changed):
            report[" + ".join(unit) or "(whole model)"] = _fit(model, unit, cache_p, target, config, gen)
        with torch.no_grad():
            cache_p = [_run(model, unit, h) for h in cache_p]
        cache_d = target
    ctx.info.update({"units": report, "pruned_layers": changed, "data": source["data"], "samples_used": len(x),
                     "labels_used": 0, "steps_per_unit": config.steps, "backprop": "per unit, on calibration inputs"})
    return model


def _fit(model: nn.Module, unit: list[str], inputs: list[torch.Tensor], target: list[torch.Tensor],
         config: BlockConfig, gen: torch.Generator) -> dict[str, float]:
    """Adam on the unit's parameters (zeros kept) towards ``target``; the mean squared error before and after."""
    modules = nn.ModuleList(model.get_submodule(name) for name in unit)
    x, y = torch.cat(inputs), torch.cat(target)

    def error() -> float:
        with torch.no_grad():
            return float(sum(((_run(model, unit, a) - b) ** 2).sum() for a, b in zip(inputs, target)) / y.numel())

    before = error()
    masked = mask_zeros(modules)
    params = list(modules.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    for _ in range(config.steps):
        pick = torch.randint(len(x), (min(config.step_batch, len(x)),), generator=gen)
        loss = nn.functional.mse_loss(_run(model, unit, x[pick]), y[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for m in masked:
        torch.nn.utils.prune.remove(m, "weight")
    return {"mse_before": before, "mse_after": error()}
