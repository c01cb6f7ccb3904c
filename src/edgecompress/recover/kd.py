"""``recover.kd``: label-free distillation on a few unlabeled inputs with augmentation — the pruned model is trained
to match the dense model's softened outputs (KL divergence) on randomly flipped and cropped copies of the
calibration inputs, so a few hundred images give many different views. BatchNorm statistics stay frozen (too few
images to re-estimate them while training); pruned (zero) weights stay zero."""

from __future__ import annotations

import copy

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from edgecompress.context import StageContext
from edgecompress.recover.bias import nothing_to_do
from edgecompress.recover.calib import CalibConfig, calibration_inputs
from edgecompress.registry import CPU_AND_CUDA, register
from edgecompress.train import mask_zeros

STAGE = "recover.kd"


class KDConfig(CalibConfig):
    """Settings of ``recover.kd``."""

    epochs: int = Field(10, ge=1, le=10_000, description="passes over the calibration inputs")
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="Adam learning rate")
    step_batch: int = Field(32, ge=1, le=65536, description="inputs per Adam step")
    temperature: float = Field(1.0, gt=0.0, le=100.0, description="softmax temperature of both models' outputs")
    augment: bool = Field(True, description="image inputs [N, C, H, W]: random horizontal flip and random resized "
                                            "crop (50-100% of the area, resized back) of every input, every step")


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image randomly flipped left-right and cropped to a random 50-100% of its area, resized back."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(n):
        share = 0.5 + 0.5 * float(torch.rand(1, generator=gen))
        ch, cw = max(1, round(h * share ** 0.5)), max(1, round(w * share ** 0.5))
        top = int(torch.randint(h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(w - cw + 1, (1,), generator=gen))
        crop = x[i:i + 1, :, top:top + ch, left:left + cw]
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        out[i] = crop[0].flip(-1) if bool(torch.rand(1, generator=gen) < 0.5) else crop[0]
    return out


@register(STAGE, KDConfig, devices=CPU_AND_CUDA)
def recover_kd(model: nn.Module, config: KDConfig, ctx: StageContext) -> nn.Module:
    """Label-free distillation: train the pruned model towards the dense model's outputs (KL) on augmented
    unlabeled inputs; BatchNorm statistics frozen, zero weights kept. Reports steps, samples and losses."""
    dense = ctx.require_teacher(STAGE).eval()
    model = copy.deepcopy(model).eval()
    if nothing_to_do(model, dense, ctx, STAGE):
        return model
    x, source = calibration_inputs(config, ctx, dense, STAGE)
    images = config.augment and x.dim() == 4
    gen = torch.Generator().manual_seed(ctx.seed)
    masked = mask_zeros(model)
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    t, losses = config.temperature, []
    for _ in range(config.epochs):
        total = 0.0
        for index in torch.randperm(len(x), generator=gen).split(config.step_batch):
            batch = augment(x[index], gen) if images else x[index]
            with torch.no_grad():
                target = F.log_softmax(dense(batch) / t, dim=1)
            loss = F.kl_div(F.log_softmax(model(batch) / t, dim=1), target, log_target=True,
                            reduction="batchmean") * t * t
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss) * len(index)
        losses.append(round(total / len(x), 6))
    for m in masked:
        torch.nn.utils.prune.remove(m, "weight")
    ctx.info.update({"kl_per_epoch": losses, "epochs": config.epochs, "augment": images, "data": source["data"],
                     "samples_used": len(x), "labels_used": 0, "backprop": "whole model, on augmented inputs"})
    return model
