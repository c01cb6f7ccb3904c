"""``hw.separable``: standard convolutions rewritten as depthwise + pointwise pairs (the form mobile NPUs and
XNNPACK run best), initialised from a per-input-channel SVD of the original weights, then recovered by distillation
from the model as it entered the stage."""

from __future__ import annotations

import copy

from pydantic import Field
from torch import nn

from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.factorize.layers import SeparableConv2d
from edgecompress.factorize.select import layer_positions, select_layers
from edgecompress.factorize.recovery import RecoverySettings, recover
from edgecompress.measure.counts import count_macs, count_params
from edgecompress.nn.rebuild import set_module
from edgecompress.registry import CPU_AND_CUDA, StageConfig, register

STAGE = "hw.separable"


class SeparableConfig(StageConfig):
    """Settings of ``hw.separable``."""

    multiplier: int = Field(1, ge=1, le=1024, description="depthwise filters per input channel: 1 is the usual "
                            "separable conv; kernel height x width reproduces the original convolution exactly")
    layers: list[str] = Field([], description="module names or globs to rewrite (default: every k x k Conv2d)")
    ignore: list[str] = Field([], description="module names or globs left as they are")
    only_fewer_macs: bool = Field(True, description="leave a convolution whose separable form has no fewer MACs")
    recovery: RecoverySettings = Field(RecoverySettings(epochs=2), description="distillation from the model as it "
                                       "entered the stage (epochs: 0 skips it)")

    def labels_needed(self) -> str | None:
        return self.recovery.labels_needed()


def _why_not(m: nn.Conv2d) -> str | None:
    if m.groups > 1:
        return f"already grouped (groups={m.groups})"
    if m.kernel_size == (1, 1):
        return "1x1 convolution: already pointwise"
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        return f"padding {m.padding!r} ({m.padding_mode}): only explicit zero padding is supported"
    return None


@register(STAGE, SeparableConfig, devices=CPU_AND_CUDA)
def hw_separable(model: nn.Module, config: SeparableConfig, ctx: StageContext) -> nn.Module:
    """Depthwise-separable rewrite: each k x k Conv2d becomes a depthwise k x k conv (``multiplier`` filters per
    input channel) and a 1x1 conv, initialised by a rank-``multiplier`` SVD of each input channel's filters.

    ``multiplier: k*k`` is exact. Convolutions whose separable form has no fewer MACs are left (reported), as are
    grouped and 1x1 convolutions. Recovery: distillation from the incoming model (2 epochs by default).
    """
    task = ctx.require_task(STAGE)
    original = model
    model = copy.deepcopy(model).eval()
    example = task.example_inputs(1).to(ctx.device)
    convs = select_layers(model, config.layers, config.ignore, STAGE, (nn.Conv2d,))
    skipped = {n: why for n, m in convs.items() if (why := _why_not(m))}
    convs = {n: m for n, m in convs.items() if n not in skipped}
    positions = layer_positions(model, convs, example)
    macs0, params0, rows = count_macs(model, example), count_params(model), []
    for name, conv in convs.items():
        (kh, kw), cin, cout = conv.kernel_size, conv.in_channels, conv.out_channels
        if config.multiplier > kh * kw:
            raise EdgeCompressError(f"multiplier {config.multiplier} is larger than layer {name!r} allows",
                                    where=f"{STAGE}.multiplier",
                                    fix=f"use at most {kh * kw} (its {kh}x{kw} kernel; {kh * kw} is exact)")
        if name not in positions:
            skipped[name] = "not called by the model's forward pass"
            continue
        px = positions[name][2] * positions[name][3]
        old, new = cout * cin * kh * kw * px, config.multiplier * cin * (kh * kw + cout) * px
        if config.only_fewer_macs and new >= old:
            skipped[name] = f"multiplier {config.multiplier} would need {new} MACs, the layer has {old}"
            continue
        pair = SeparableConv2d.of(conv, config.multiplier)
        w = conv.weight.detach()
        error = float((pair.dense_weight() - w).norm() / w.norm().clamp_min(1e-30))
        set_module(model, name, pair)
        rows.append({"name": name, "kernel": [kh, kw], "channels": [cin, cout], "macs": [old, new],
                     "weight_error": round(error, 6)})
    info = recover(model, original, config.recovery, ctx, STAGE)
    macs1 = count_macs(model, example)
    ctx.info.update({"rewritten": rows, "skipped": skipped, "multiplier": config.multiplier, "macs_before": macs0,
                     "macs_after": macs1, "macs_ratio": round(macs1 / macs0, 6), "params_before": params0,
                     "params_after": count_params(model), **info})
    return model
