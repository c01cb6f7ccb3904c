"""Unstructured magnitude pruning with ``torch.nn.utils.prune``: one-shot or gradual (Zhu & Gupta 2017)."""

from __future__ import annotations

import copy
from typing import Literal

import torch.nn.utils.prune as tprune
from pydantic import Field
from torch import nn

from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.nn.layers import weight_layers
from edgecompress.registry import StageConfig, register
from edgecompress.train import train

STAGE = "prune.magnitude"


class MagnitudeConfig(StageConfig):
    """Settings of ``prune.magnitude`` (unstructured: zeros inside dense Conv/Linear weights)."""

    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of Conv/Linear weights set to zero")
    scope: Literal["global", "local"] = Field(
        "global", description="global: one ranking across all layers; local: every layer gets exactly `sparsity`")
    norm: Literal["l1", "l2"] = Field(
        "l1", description="global scope: l1 ranks raw |w| (Han et al. 2015); l2 ranks |w| / ||W_layer||_2 so "
                          "layers of different scale compete fairly. Local scope: both give the same ranking")
    schedule: Literal["oneshot", "gradual"] = Field(
        "oneshot", description="oneshot: prune once; gradual: polynomial schedule of Zhu & Gupta 2017")
    steps: int = Field(5, ge=1, le=100, description="gradual: number of pruning steps")
    epochs_per_step: int = Field(1, ge=0, le=100, description="gradual: fine-tuning epochs after each step (needs data)")
    lr: float = Field(0.01, gt=0.0, le=10.0, description="gradual: learning rate of the fine-tuning between steps")
    exclude_classifier: bool = Field(
        True, description="leave the classifier dense: the last Linear (the last Conv if there is no Linear)")


def polynomial_schedule(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """Target sparsity after each of ``steps`` steps: s_t = s_f + (s_i - s_f)(1 - t/n)^3, t = 1..n (Zhu & Gupta 2017).

    Prunes fast while many redundant weights remain and slowly near the end; the last value is ``final``.
    """
    return [final + (initial - final) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]


def _target_layers(model: nn.Module, exclude_classifier: bool) -> dict[str, nn.Module]:
    layers = weight_layers(model)
    if exclude_classifier and layers:
        linears = [n for n, m in layers.items() if isinstance(m, nn.Linear)]
        layers.pop(linears[-1] if linears else list(layers)[-1])
    return layers


def _masked(module: nn.Module) -> int:
    """Weights already removed by a torch prune mask (0 when the module carries none)."""
    mask = getattr(module, "weight_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


def _prune_to(layers: dict[str, nn.Module], sparsity: float, scope: str, norm: str) -> None:
    """Extend the masks so that exactly ``round(sparsity * n)`` weights are masked (per layer or in total).

    torch prune applies a further ``amount`` to the still-unmasked weights, so the count is made relative.
    """
    if scope == "local":
        for m in layers.values():
            tprune.l1_unstructured(m, "weight", amount=max(0, round(sparsity * m.weight.numel()) - _masked(m)))
        return
    total = sum(m.weight.numel() for m in layers.values())
    amount = max(0, round(sparsity * total) - sum(_masked(m) for m in layers.values()))
    scores = {(m, "weight"): m.weight.detach().abs() / (m.weight.detach().norm() + 1e-12 if norm == "l2" else 1.0)
              for m in layers.values()}
    tprune.global_unstructured(list(scores), tprune.L1Unstructured, importance_scores=scores, amount=amount)


def _sparsity(layers: dict[str, nn.Module]) -> float:
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    return zeros / max(1, sum(m.weight.numel() for m in layers.values()))


@register(STAGE, MagnitudeConfig)
def prune_magnitude(model: nn.Module, config: MagnitudeConfig, ctx: StageContext) -> nn.Module:
    """Zero the smallest Conv/Linear weights (unstructured; global or per-layer; one-shot or gradual).

    The zeros stay in dense tensors: parameter count, file size and dense latency do not change until a
    sparse runtime or a composite method (e.g. DNNShifter) turns them into structure. Gradual pruning
    fine-tunes between steps through the masks; at the end the masks are made permanent (plain modules).
    """
    model = copy.deepcopy(model)
    layers = _target_layers(model, config.exclude_classifier)
    if not layers:
        raise EdgeCompressError("the model has no Conv/Linear layer to prune besides the classifier", where=STAGE,
                                fix="set exclude_classifier: false, or drop this stage")
    gradual = config.schedule == "gradual"
    targets = polynomial_schedule(config.sparsity, config.steps) if gradual else [config.sparsity]
    task = ctx.require_task(STAGE) if gradual and config.epochs_per_step > 0 else None
    steps = []
    for step, target in enumerate(targets, 1):
        _prune_to(layers, target, config.scope, config.norm)
        record = {"step": step, "target": target, "sparsity": _sparsity(layers)}
        if task is not None:
            record["train"] = train(model, task, epochs=config.epochs_per_step, lr=config.lr, seed=ctx.seed + step,
                                    progress=ctx.progress, description=f"{STAGE} step {step}/{len(targets)}")
        steps.append(record)
    for m in layers.values():
        tprune.remove(m, "weight")
    weights = list(model.parameters())
    ctx.info.update({
        "scope": config.scope, "norm": config.norm, "schedule": config.schedule, "steps": steps,
        "excluded": sorted(set(weight_layers(model)) - set(layers)),
        "layers": {n: {"sparsity": _sparsity({n: m}), "params": m.weight.numel()} for n, m in layers.items()},
        "sparsity": _sparsity(layers),
        "model_sparsity": sum(int((p == 0).sum()) for p in weights) / max(1, sum(p.numel() for p in weights)),
    })
    return model
