"""``factorize.lowrank``: low-rank factorization of Linear and Conv2d layers (see :mod:`.layers` for the
decompositions), with the rank of each layer chosen by retained energy, given outright, or searched so the whole
model meets a MAC or parameter budget; layers where the factorized form would not save MACs are left as they are
and named with the reason."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.factorize.layers import (FactorizedConv2d, LowRankLinear, channel_modes, energy_rank,
                                           singular_values, spatial_matrix)
from edgecompress.factorize.recovery import RecoverySettings, recover
from edgecompress.factorize.select import layer_positions, select_layers
from edgecompress.measure.counts import count_macs, count_params
from edgecompress.nn.rebuild import set_module
from edgecompress.registry import ALL_TASK_KINDS, CPU_AND_CUDA, TOKEN_TASK_KINDS, StageConfig, register

STAGE = "factorize.lowrank"


class LowRankConfig(StageConfig):
    """Settings of ``factorize.lowrank``: how convolutions split and how ranks are chosen (one way of four)."""

    conv_mode: Literal["tucker2", "channel", "spatial"] = Field(
        "tucker2", description="k x k convolutions: tucker2 (1x1, k x k core, 1x1), channel (k x k to rank r, then "
                               "1x1) or spatial (k x 1 then 1 x k); 1x1 convolutions and Linear layers: plain SVD")
    energy: float | None = Field(None, gt=0.0, le=1.0, description="rank of each layer: the smallest keeping this "
                                 "share of the squared singular values; default 0.9 when no other choice is given")
    rank: int | None = Field(None, ge=1, description="the same rank for every layer (tucker2: both ranks)")
    ranks: dict[str, int | list[int]] = Field({}, description="rank per layer name (tucker2: [r_in, r_out]); "
                                                              "other selected layers follow energy/rank/budget")
    target_macs_ratio: float | None = Field(None, gt=0.0, lt=1.0, description="search one energy level for all "
                                            "layers so the model's MACs are at most this share of the original")
    target_params_ratio: float | None = Field(None, gt=0.0, lt=1.0, description="the same for parameters")
    layers: list[str] = Field([], description="module names or globs to factorize (default: every Conv2d/Linear)")
    ignore: list[str] = Field([], description="module names or globs left as they are")
    recovery: RecoverySettings = Field(RecoverySettings(), description="distillation from the model as it entered "
                                       "the stage (epochs: 0 skips it)")

    @model_validator(mode="after")
    def _one_choice(self):
        given = [k for k in ("energy", "rank", "target_macs_ratio", "target_params_ratio") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"give one of energy, rank, target_macs_ratio, target_params_ratio, not {given}")
        return self

    def labels_needed(self) -> str | None:
        return self.recovery.labels_needed()


@dataclass
class Candidate:
    """One layer that can be factorized: its form, spectra (one per rank), largest ranks and shapes."""

    name: str
    layer: nn.Module
    mode: str  # svd (Linear or 1x1 conv), channel, spatial, tucker2
    spectra: list[torch.Tensor]
    max_ranks: list[int]
    positions: tuple[int, int, int, int]  # input H, W and output H, W (Linear: tokens, 1, tokens, 1)

    def cost(self, ranks: list[int]) -> tuple[int, int]:
        """(MACs per sample, weights) of the factorized layer at ``ranks``; ``ranks=[]``: of the layer itself."""
        m = self.layer
        if isinstance(m, nn.Linear):
            cin, cout, kh, kw = m.in_features, m.out_features, 1, 1
        else:
            cin, cout, (kh, kw) = m.in_channels, m.out_channels, m.kernel_size
        hin, win, hout, wout = self.positions
        out_px = hout * wout
        if not ranks:
            return cout * cin * kh * kw * out_px, cout * cin * kh * kw
        r = ranks[0]
        if self.mode in ("svd", "channel"):
            return r * (cin * kh * kw + cout) * out_px, r * (cin * kh * kw + cout)
        if self.mode == "spatial":
            return r * cin * kh * hout * win + cout * r * kw * out_px, r * (cin * kh + cout * kw)
        r_in, r_out = ranks
        return (cin * r_in * hin * win + (r_in * r_out * kh * kw + r_out * cout) * out_px,
                cin * r_in + r_in * r_out * kh * kw + r_out * cout)

    def energy_ranks(self, energy: float) -> list[int]:
        return [energy_rank(s, energy) for s in self.spectra]

    def kept_energy(self, ranks: list[int]) -> float:
        return float(min(((s[:r] ** 2).sum() / (s**2).sum().clamp_min(1e-30)) for s, r in zip(self.spectra, ranks,
                                                                                                 strict=True)))


def _why_not(m: nn.Module) -> str | None:
    """Why a Conv/Linear layer cannot be factorized here (None: it can)."""
    if isinstance(m, nn.Linear):
        return None
    if not isinstance(m, nn.Conv2d):
        return f"{type(m).__name__}: only Conv2d and Linear layers are factorized"
    if m.groups > 1:
        return f"grouped convolution (groups={m.groups}): its filters see few channels, there is no matrix to split"
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        return f"padding {m.padding!r} ({m.padding_mode}): only explicit zero padding is supported"
    return None


def candidates(model: nn.Module, config: LowRankConfig, example) -> tuple[list[Candidate], dict[str, str]]:
    """The layers the stage may factorize and, by name, the selected ones it must leave and why."""
    layers = select_layers(model, config.layers, config.ignore, STAGE, (nn.modules.conv._ConvNd, nn.Linear))
    unknown = sorted(set(config.ranks) - set(layers))
    if unknown:
        raise EdgeCompressError(f"ranks names layers that are not selected Conv/Linear layers: {unknown}",
                                where=f"{STAGE}.ranks", fix=f"use names among: {', '.join(layers)}")
    skipped = {n: why for n, m in layers.items() if (why := _why_not(m))}
    layers = {n: m for n, m in layers.items() if n not in skipped}
    positions = layer_positions(model, layers, example)
    found = []
    for name, m in layers.items():
        if name not in positions:
            skipped[name] = "not called by the model's forward pass"
            continue
        w = m.weight.detach()
        if isinstance(m, nn.Linear) or m.kernel_size == (1, 1):
            mode, mats = "svd", [w.flatten(1)]
        elif config.conv_mode == "tucker2":
            mode, mats = "tucker2", list(reversed(channel_modes(w)))  # [input mode, output mode]
        else:
            mode, mats = config.conv_mode, [w.flatten(1) if config.conv_mode == "channel" else spatial_matrix(w)]
        spectra = [singular_values(x) for x in mats]
        found.append(Candidate(name, m, mode, spectra, [min(x.shape) for x in mats] if mode != "tucker2"
                               else [w.shape[1], w.shape[0]], positions[name]))
    return found, skipped


def _explicit(c: Candidate, given: int | list[int]) -> list[int]:
    ranks = [given] * len(c.max_ranks) if isinstance(given, int) else list(given)
    if len(ranks) != len(c.max_ranks) or any(r < 1 for r in ranks):
        raise EdgeCompressError(f"layer {c.name!r} ({c.mode}) takes {len(c.max_ranks)} positive rank(s), got {given}",
                                where=f"{STAGE}.ranks", fix="tucker2: [r_in, r_out]; otherwise one integer")
    if any(r > top for r, top in zip(ranks, c.max_ranks, strict=True)):
        raise EdgeCompressError(f"rank {given} is larger than layer {c.name!r} allows", where=f"{STAGE}.rank",
                                fix=f"use at most {c.max_ranks} for this layer ({c.mode}: "
                                    f"{'[input channels, output channels]' if c.mode == 'tucker2' else 'min of the matrix sides'})")
    return ranks


def plan(cands: list[Candidate], config: LowRankConfig, total: tuple[int, int]) -> dict[str, list[int]]:
    """Ranks per layer name for every candidate (the caller skips those that would not save MACs)."""
    fixed = {c.name: _explicit(c, config.ranks[c.name]) for c in cands if c.name in config.ranks}
    free = [c for c in cands if c.name not in fixed]
    if config.rank is not None:
        return {**fixed, **{c.name: _explicit(c, config.rank) for c in free}}
    target = config.target_macs_ratio or config.target_params_ratio
    if target is None:
        return {**fixed, **{c.name: c.energy_ranks(config.energy or 0.9) for c in free}}
    which = 0 if config.target_macs_ratio else 1
    limit = target * total[which]

    def after(energy: float) -> float:
        ranks = {**fixed, **{c.name: c.energy_ranks(energy) for c in free}}
        return total[which] - sum(max(0, c.cost([])[which] - c.cost(ranks[c.name])[which]) for c in cands)

    if after(0.0) > limit:
        what = "MACs" if which == 0 else "parameters"
        raise EdgeCompressError(
            f"rank 1 in every factorizable layer still leaves {after(0.0) / total[which]:.3f}x the {what}, above the "
            f"target {target}", where=f"{STAGE}.target_{'macs' if which == 0 else 'params'}_ratio",
            fix=f"raise the target to at least {after(0.0) / total[which]:.3f}, or combine with prune.structured")
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if after(mid) <= limit else (lo, mid)
    return {**fixed, **{c.name: c.energy_ranks(lo) for c in free}}


@register(STAGE, LowRankConfig, task_kinds=(*ALL_TASK_KINDS, *TOKEN_TASK_KINDS), devices=CPU_AND_CUDA)
def factorize_lowrank(model: nn.Module, config: LowRankConfig, ctx: StageContext) -> nn.Module:
    """Low-rank factorization: Linear layers by truncated SVD, Conv2d by Tucker-2, channel or spatial SVD.

    Ranks: ``energy`` (default 0.9 of the squared singular values), one ``rank``, per-layer ``ranks``, or a
    ``target_macs_ratio`` / ``target_params_ratio`` met by one energy level searched for all layers. A layer whose
    factorized form would not have fewer MACs stays as it is (reported with the reason), as do grouped convs.
    Optional recovery distils from the model as it entered the stage. Works on transformer Linear projections.
    """
    task = ctx.require_task(STAGE)
    original = model
    model = copy.deepcopy(model).eval()
    example = task.example_inputs(1)
    example = {k: v.to(ctx.device) for k, v in example.items()} if isinstance(example, dict) else example.to(ctx.device)
    macs0, params0 = count_macs(model, example), count_params(model)
    cands, skipped = candidates(model, config, example)
    ranks = plan(cands, config, (macs0, params0))
    rows = []
    for c in cands:
        (old_macs, old_params), (new_macs, new_params) = c.cost([]), c.cost(ranks[c.name])
        row = {"name": c.name, "mode": c.mode, "ranks": ranks[c.name], "max_ranks": c.max_ranks,
               "energy_kept": round(c.kept_energy(ranks[c.name]), 6), "macs": [old_macs, new_macs],
               "params": [old_params, new_params]}
        if new_macs >= old_macs:
            skipped[c.name] = f"rank {ranks[c.name]} would need {new_macs} MACs, the layer has {old_macs}"
            continue
        new = LowRankLinear.of(c.layer, ranks[c.name][0]) if isinstance(c.layer, nn.Linear) else \
            FactorizedConv2d.of(c.layer, "channel" if c.mode == "svd" else c.mode, ranks[c.name])
        set_module(model, c.name, new)
        rows.append(row)
    ctx.add_solve_flops(sum(4 * c.layer.weight.numel() * min(c.layer.weight.flatten(1).shape) for c in cands))
    info = recover(model, original, config.recovery, ctx, STAGE)
    macs1 = count_macs(model, example)
    ctx.info.update({"factorized": rows, "skipped": skipped, "macs_before": macs0, "macs_after": macs1,
                     "macs_ratio": round(macs1 / macs0, 6), "params_before": params0,
                     "params_after": count_params(model), **info})
    return model
