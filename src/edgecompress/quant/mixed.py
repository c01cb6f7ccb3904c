"""``quant.mixed``: mixed-precision weight-only quantization — a per-layer bit width chosen by measured
sensitivity under a size budget, every weight stored packed at its width (shared machinery:
:mod:`edgecompress.quant.weightonly`).

1. Sensitivity: each layer alone is quantized to each candidate width (RTN or GPTQ, every other layer float)
   and the KL divergence of the model's softmax outputs from the float model's, averaged over the unlabeled
   calibration inputs, is its cost at that width (label-free).
2. Plan: the assignment with the least summed sensitivity whose weight bytes (packed codes + scales + zero
   points of the quantized layers) fit ``size_budget`` x their FP32 bytes, solved exactly as a
   multiple-choice knapsack (a dynamic programme over the Pareto frontier of (bytes, summed cost)). Summing the
   per-layer costs assumes they add up (as HAWQ-style methods do); the report gives the predicted sum beside
   the measured KL of the whole plan.
3. The plan is quantized (GPTQ sequentially in forward order) and exported like ``quant.weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from edgecompress.calibration import MIN_CALIB_SAMPLES
from edgecompress.context import StageContext, StageOutput
from edgecompress.errors import EdgeCompressError
from edgecompress.quant.weightonly import WeightQuantBase, prepare, quantize_and_export
from edgecompress.quant.weights import MAX_BITS, MIN_BITS, QuantSpec, quantize_layers
from edgecompress.registry import register

STAGE = "quant.mixed"
BATCH = 256


class MixedConfig(WeightQuantBase):
    """Settings of ``quant.mixed``."""

    candidate_bits: list[int] = Field([4, 8], min_length=1, max_length=7,
                                      description=f"bit widths a layer may get ({MIN_BITS}-{MAX_BITS})")
    size_budget: float = Field(
        0.2, gt=0.0, le=1.0,
        description="the most bytes the quantized layers' weights may take (packed codes, scales, zero points) as "
                    "a fraction of their FP32 bytes; for reference int8 per channel is about 0.25 and int4 with "
                    "groups of 32 about 0.16",
    )
    calib_samples: int = Field(256, ge=MIN_CALIB_SAMPLES, le=100_000,
                               description="unlabeled training inputs (sensitivity, GPTQ Hessians, output check)")

    @field_validator("candidate_bits")
    @classmethod
    def _bits(cls, v: list[int]) -> list[int]:
        bad = [b for b in v if not MIN_BITS <= b <= MAX_BITS]
        if bad:
            raise ValueError(f"bit widths {bad} are outside the supported {MIN_BITS}-{MAX_BITS}")
        return sorted(set(v))


def _kl(model: nn.Module, x: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean KL(reference || model) of the softmax outputs over ``x`` (``reference``: float log-probabilities)."""
    with torch.no_grad():
        logp = torch.cat([F.log_softmax(model(b), dim=-1) for b in x.split(BATCH)])
    return float(F.kl_div(logp, reference, log_target=True, reduction="batchmean"))


def sensitivity(model: nn.Module, layers: list[str], x: torch.Tensor, specs: list[QuantSpec],
                config: WeightQuantBase) -> dict[str, dict[int, float]]:
    """For each layer and spec: the KL divergence from the float outputs with only that layer quantized."""
    with torch.no_grad():
        reference = torch.cat([F.log_softmax(model(b), dim=-1) for b in x.split(BATCH)])
    table: dict[str, dict[int, float]] = {}
    for name in layers:
        weight = model.get_submodule(name).weight
        original = weight.detach().clone()
        table[name] = {}
        for spec in specs:
            quantize_layers(model, {name: spec}, x, config.algorithm, config.damp, config.act_order)
            table[name][spec.bits] = _kl(model, x, reference)
            with torch.no_grad():
                weight.copy_(original)
    return table


def plan(costs: dict[str, dict[int, tuple[int, float]]], budget: int) -> tuple[dict[str, int], int, float]:
    """Least summed cost with summed bytes <= ``budget``: ``costs[layer][bits] = (bytes, cost)``. Exact: the
    frontier of non-dominated (bytes, cost, choice) partial plans is extended one layer at a time."""
    frontier: list[tuple[int, float, dict[str, int]]] = [(0, 0.0, {})]
    for name, options in costs.items():
        extended = sorted((b + nb, c + nc, {**choice, name: bits}) for b, c, choice in frontier
                          for bits, (nb, nc) in options.items() if b + nb <= budget)
        frontier = []
        for item in extended:  # ascending bytes: keep a plan only if it costs less than every cheaper one
            if not frontier or item[1] < frontier[-1][1]:
                frontier.append(item)
    best = frontier[-1]  # the last kept plan has the least cost
    return best[2], best[0], best[1]


@register(STAGE, MixedConfig, produces_artifact=True)
def mixed_precision(model: nn.Module, config: MixedConfig, ctx: StageContext) -> StageOutput:
    """Mixed-precision weight-only quantization: per-layer bit widths from measured sensitivity under a size budget.

    Each Conv/Linear layer alone is quantized at every ``candidate_bits`` width and its sensitivity is the KL
    divergence of the outputs from the float model's on unlabeled calibration inputs; an exact knapsack picks
    the widths with the least summed sensitivity whose packed weight bytes fit ``size_budget`` x FP32. Stored
    like ``quant.weight`` (packed INT4/INT8, DequantizeLinear); the float model is returned unchanged.
    """
    prep = prepare(model, config, ctx, STAGE)
    specs = [QuantSpec(b, config.group_size, config.symmetric) for b in config.candidate_bits]
    shapes = {n: prep.model.get_submodule(n).weight.flatten(1).shape for n in prep.layers}
    fp32_bytes = sum(4 * r * k for r, k in shapes.values())
    budget = int(config.size_budget * fp32_bytes)
    smallest = sum(min(s.nbytes(r, k) for s in specs) for r, k in shapes.values())
    if smallest > budget:
        raise EdgeCompressError(
            f"size_budget {config.size_budget} ({budget:,} bytes) is below the smallest achievable size, "
            f"{smallest / fp32_bytes:.4f} of FP32 ({smallest:,} bytes, every layer at {specs[0].bits} bits)",
            where=f"{STAGE}.size_budget",
            fix=f"raise size_budget to at least {smallest / fp32_bytes:.4f}, or allow fewer bits / larger groups")
    sens = sensitivity(prep.model, prep.layers, prep.x, specs, config)
    costs = {n: {s.bits: (s.nbytes(*shapes[n]), sens[n][s.bits]) for s in specs} for n in prep.layers}
    choice, predicted_bytes, predicted_kl = plan(costs, budget)
    reference = prep.model  # still float: sensitivity() restores every weight
    with torch.no_grad():
        float_logp = torch.cat([F.log_softmax(reference(b), dim=-1) for b in prep.x.split(BATCH)])
    chosen = {n: QuantSpec(choice[n], config.group_size, config.symmetric) for n in prep.layers}
    used = "/".join(str(b) for b in sorted(set(choice.values())))
    artifact, report = quantize_and_export(prep, chosen, config, ctx, f"fp32-w{used}")
    ctx.info.update(
        candidate_bits=config.candidate_bits, group_size=config.group_size, symmetric=config.symmetric,
        size_budget=config.size_budget, budget_bytes=budget, smallest_bytes=smallest,
        sensitivity_kl={n: {str(b): v for b, v in row.items()} for n, row in sens.items()},
        plan=choice, plan_solver="exact multiple-choice knapsack on summed per-layer KL (additivity assumed)",
        predicted_kl=predicted_kl, measured_kl=_kl(prep.model, prep.x, float_logp),
        bits_per_weight=8 * report["weight_bytes"] / (report["weight_bytes_fp32"] / 4), **report,
    )
    if report["weight_bytes"] != predicted_bytes:
        raise RuntimeError(f"stored weight bytes {report['weight_bytes']} differ from the plan's {predicted_bytes}")
    return StageOutput(model, artifact)
