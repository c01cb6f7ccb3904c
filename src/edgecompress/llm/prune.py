"""``prune.llm``: unstructured or N:M pruning of every projection of a transformer, layer by layer.

Pass 1 (``owl`` and ``mosaic`` only) runs the dense model layer by layer and measures the outlier ratio of each
projection's and each layer's Wanda scores; :mod:`edgecompress.llm.allocation` turns them into a sparsity per
projection. Pass 2 visits the layers in order on the outputs of the already-pruned layers: one forward pass of
the layer collects each projection's input statistics, then every projection is pruned by the criterion to its
sparsity (:mod:`edgecompress.llm.criteria`). Mosaic is ``allocation: mosaic`` with ``criterion: sparsegpt``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from pydantic import Field, model_validator
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.llm import allocation, criteria
from edgecompress.llm.arch import INPUT_GROUPS, Transformer, transformer
from edgecompress.llm.layerwise import LayerCall, capture_calls, collect_stats, run_layers
from edgecompress.registry import StageConfig


class LLMPruneConfig(StageConfig):
    """``prune.llm`` settings: target ``sparsity`` (or ``n_m`` such as "2:4"), criterion, allocation."""

    sparsity: float = Field(0.5, gt=0, lt=1, description="share of each layer's projection weights to zero")
    criterion: str = Field("sparsegpt", description=f"one of {criteria.CRITERIA}")
    allocation: str = Field("uniform", description=f"one of {allocation.ALLOCATIONS}")
    n_m: str | None = Field(None, description='N:M pattern instead of a sparsity, e.g. "2:4" (N zeros per M)')
    outlier_m: float = Field(5.0, gt=0, description="OWL/Mosaic: a score is an outlier above M x the mean")
    lam: float = Field(0.08, ge=0, lt=0.5, description="OWL/Mosaic: densities spread over [-lam, lam]")
    damp: float = Field(0.01, gt=0, description="SparseGPT: damping, share of the Hessian's mean diagonal")
    samples: int = Field(32, ge=1, description="calibration sequences")
    batch_size: int = Field(8, ge=1, description="calibration sequences per forward pass")

    @model_validator(mode="after")
    def _check(self):
        if self.criterion not in criteria.CRITERIA:
            raise ValueError(f"criterion {self.criterion!r} is not one of {criteria.CRITERIA}")
        if self.allocation not in allocation.ALLOCATIONS:
            raise ValueError(f"allocation {self.allocation!r} is not one of {allocation.ALLOCATIONS}")
        if self.n_m is not None:
            n, m = self.nm
            if not 0 < n < m:
                raise ValueError(f'n_m {self.n_m!r}: need 0 < N < M, e.g. "2:4"')
            if self.allocation != "uniform":
                raise ValueError("n_m fixes every projection's sparsity at N/M: use allocation: uniform")
        return self

    @property
    def target(self) -> float:
        """The share of weights to zero: N/M with ``n_m``, else ``sparsity``."""
        return self.nm[0] / self.nm[1] if self.nm else self.sparsity

    @property
    def nm(self) -> tuple[int, int] | None:
        if self.n_m is None:
            return None
        try:
            n, m = (int(v) for v in self.n_m.split(":"))
        except ValueError:
            raise ValueError(f'n_m {self.n_m!r} is not "N:M", e.g. "2:4"') from None
        return n, m


@dataclass
class LLMPruneResult:
    """What ``prune.llm`` did, per projection (full module names): the sparsity planned and reached, its weight
    count, its outlier ratio (``owl``/``mosaic``), and the time it took."""

    planned: dict[str, float]
    reached: dict[str, float]
    sizes: dict[str, int]
    seconds: float
    outlier_ratios: dict[str, float] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Zeros over all projection weights."""
        return sum(self.reached[k] * self.sizes[k] for k in self.reached) / sum(self.sizes.values())


def _check_shapes(arch: Transformer, config: LLMPruneConfig) -> None:
    """Refuse an N:M pattern that does not tile every projection's rows (a sparsity below 1, which the config
    ensures, never empties a projection: allocations keep at least 1% of each)."""
    nm = config.nm
    for i in range(len(arch)):
        for role, proj in arch.projections(i).items():
            if nm and proj.in_features % nm[1]:
                raise EdgeCompressError(f"{config.n_m} needs input widths that are multiples of {nm[1]}, but "
                                        f"{arch.name(i, role)} has {proj.in_features}", where="n_m",
                                        fix="use an N:M whose M divides every projection's input width")


def outlier_ratios(arch: Transformer, calls: list[LayerCall], m: float, device: torch.device
                   ) -> tuple[dict[int, float], dict[tuple[int, str], float]]:
    """Pass 1 on the dense model: the outlier ratio of each layer's and each projection's Wanda scores."""
    layers, projections = {}, {}

    def visit(i, layer, calls):
        stats = collect_stats(arch, i, layer, calls, hessian=False)
        scores = {r: criteria.wanda_scores(p.weight, stats[INPUT_GROUPS[r]]) for r, p in arch.projections(i).items()}
        for role, s in scores.items():
            projections[(i, role)] = criteria.outlier_ratio(s, m)
        layers[i] = criteria.outlier_ratio(torch.cat([s.flatten() for s in scores.values()]), m)

    run_layers(arch, [LayerCall(c.hidden, c.args, c.kwargs) for c in calls], visit, device)
    return layers, projections


def prune_llm(model: nn.Module, batches: list[dict[str, torch.Tensor]], config: LLMPruneConfig,
              device: torch.device | str = "cpu") -> LLMPruneResult:
    """Prune ``model``'s projections in place (see the module docstring) on calibration ``batches`` (model
    inputs: ``input_ids``, ``attention_mask``); one layer at a time is on ``device``."""
    start, device = time.perf_counter(), torch.device(device)
    arch = transformer(model)
    _check_shapes(arch, config)
    sizes = {(i, r): p.weight.numel() for i in range(len(arch)) for r, p in arch.projections(i).items()}
    nm = config.nm
    if config.criterion == "magnitude" and config.allocation == "uniform":  # needs no calibration
        for i, role in sizes:
            proj = arch.projections(i)[role]
            proj.weight.data.copy_(criteria.prune_weight(proj.weight.data, None, "magnitude", config.sparsity, nm))
        return _result(arch, sizes, {k: config.target for k in sizes}, {}, start)
    calls = capture_calls(arch, batches, device)
    layer_or, proj_or = ({}, {}) if config.allocation == "uniform" else outlier_ratios(arch, calls, config.outlier_m,
                                                                                         device)
    plan = allocation.allocate(config.allocation, config.target, sizes, layer_or, proj_or, config.lam)

    def visit(i, layer, calls):
        stats = collect_stats(arch, i, layer, calls, hessian=config.criterion == "sparsegpt")
        for role, proj in arch.projections(i).items():
            w = criteria.prune_weight(proj.weight.data, stats[INPUT_GROUPS[role]], config.criterion, plan[(i, role)],
                                      nm, config.damp)
            proj.weight.data.copy_(w)

    run_layers(arch, calls, visit, device)
    return _result(arch, sizes, plan, proj_or, start)


def _result(arch: Transformer, sizes: dict, plan: dict, ratios: dict, start: float) -> LLMPruneResult:
    name = {k: arch.name(*k) for k in sizes}
    reached = {name[k]: float((arch.projections(k[0])[k[1]].weight == 0).double().mean()) for k in sizes}
    return LLMPruneResult({name[k]: v for k, v in plan.items()}, reached, {name[k]: v for k, v in sizes.items()},
                          time.perf_counter() - start, {name[k]: v for k, v in ratios.items()})
