"""The calibration samples every stage draws from its task: one draw, one minimum, one warning."""

from __future__ import annotations

import warnings

import torch

from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError

MIN_CALIB_SAMPLES = 8  # fewer samples give ranges and statistics too noisy to trust


def calibration_samples(ctx: StageContext, n: int, stage: str, labels: bool = False
                        ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``n`` training inputs drawn reproducibly with the stage's seed (``Task.calibration``), or with ``labels``
    the pair (inputs, labels). Warns when the task has fewer than ``n``; raises below
    ``MIN_CALIB_SAMPLES`` or when labels are asked of an unlabeled task."""
    task = ctx.require_task(stage)
    if labels and not task.has_labels:
        raise EdgeCompressError(f"{stage} needs labeled calibration samples, but task {task.name!r} has no labels",
                                where=stage, fix="use labeled data, or the stage's label-free setting")
    picked = task.calibration(n, seed=ctx.seed, labels=labels)
    x = picked[0] if labels else picked
    if len(x) < MIN_CALIB_SAMPLES:
        raise EdgeCompressError(
            f"only {len(x)} calibration samples are available; at least {MIN_CALIB_SAMPLES} are needed",
            where=f"{stage}.calib_samples", fix="give the task more training inputs (labels are not needed)",
        )
    if len(x) < n:
        warnings.warn(f"{stage}: calib_samples={n} but the task has {len(x)} training inputs; using them all",
                      stacklevel=3)
    return picked
