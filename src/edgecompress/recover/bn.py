"""``recover.bn``: BatchNorm re-calibration — re-estimate the running statistics of a pruned model on
unlabeled inputs (no labels, no backpropagation, weights untouched)."""

from __future__ import annotations

import copy

from torch import nn

from edgecompress.context import StageContext
from edgecompress.measure import count_macs
from edgecompress.nn.bn import reestimate_bn
from edgecompress.recover.calib import CalibConfig, batches, calibration_inputs
from edgecompress.recover.flops import forward_flops
from edgecompress.registry import CPU_AND_CUDA, register

STAGE = "recover.bn"


class BNConfig(CalibConfig):
    """Settings of ``recover.bn``."""


@register(STAGE, BNConfig, devices=CPU_AND_CUDA)
def recover_bn(model: nn.Module, config: BNConfig, ctx: StageContext) -> nn.Module:
    """Re-estimate BatchNorm statistics on unlabeled (or synthetic) inputs; weights are not changed.

    The simplest label-free recovery after pruning: the pruned layers' output statistics shifted, so the
    dense model's normalisation no longer fits. Synthetic inputs invert the dense model's (the teacher's, or
    this model's when there is no teacher) BatchNorm statistics.
    """
    model = copy.deepcopy(model).eval()
    x, source = calibration_inputs(config, ctx, ctx.teacher or model, STAGE)
    count = reestimate_bn(model, batches(x, config.batch_size))
    macs = count_macs(model, x[:1])
    ctx.info.update({
        "bn_layers": count, "data": source["data"], "samples_used": len(x), "labels_used": 0,
        "recovery_flops": forward_flops(macs, len(x)) + source["flops"], "synthesis_flops": source["flops"],
        "backprop": source["flops"] > 0 and "inputs only (data-free synthesis)" or "none",
    })
    if count == 0:
        ctx.info["warning"] = "the model has no BatchNorm layer: nothing to re-calibrate"
    return model
