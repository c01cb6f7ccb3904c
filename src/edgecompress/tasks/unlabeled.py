"""Unlabeled data: a pretrained model and samples without labels, judged by agreement with the unmodified model.

What a user with a pretrained model and a few hundred unlabeled samples can measure: after compression, how
often the model still gives the original model's top-1 answer (``agreement_top1``), how much of its top-5 it
keeps (``top5_overlap``), and how close its outputs stay (``output_cosine``, mean per-sample cosine).
The reference outputs come from :meth:`UnlabeledTask.bind_reference`, which the pipeline calls with the model
as it entered the recipe. Stages that need labels refuse such a task before any work starts.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgecompress.errors import EdgeCompressError
from edgecompress.tasks.base import SPLITS, Predict, Task, torch_predictor

LABEL_FREE_STAGES = "quant.ptq, quant.dynamic, quant.weight, quant.mixed, recover.mimic, recover.bn, recover.bias, " \
                    "prune.structured (l1/l2/bn_scale), prune.magnitude, or finetune/distill with distill alpha 1.0"


def agreement_metrics(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Top-1 agreement, top-5 overlap and mean cosine of ``outputs`` against ``reference`` (both [N, C])."""
    k = min(5, reference.shape[1])
    top_out = np.argsort(-outputs, axis=1)[:, :k]
    top_ref = np.argsort(-reference, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_out, top_ref)])
    norms = np.linalg.norm(outputs, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = np.sum(outputs * reference, axis=1) / np.maximum(norms, 1e-12)
    return {"agreement_top1": float(np.mean(top_out[:, 0] == top_ref[:, 0])), "top5_overlap": float(overlap),
            "output_cosine": float(np.mean(cosine))}


class ReferenceTask(Task):
    """A task judged against the unmodified model (no labels): ``bind_reference`` keeps that model's outputs on
    the val and test splits (``reference_outputs``), ``evaluate`` compares with them, and there is no training
    loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference: dict[str, np.ndarray] = {}

    def reference_outputs(self, predict: Predict, split: str) -> np.ndarray:
        """What is kept of a model's outputs on ``split`` to compare with (its outputs as they are)."""
        return self.outputs(predict, split)

    def bind_reference(self, model: nn.Module) -> None:
        predict = torch_predictor(model)
        self.reference = {split: self.reference_outputs(predict, split) for split in SPLITS if split != "train"}

    @property
    def can_evaluate(self) -> bool:
        return bool(self.reference)

    def output_loss(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise EdgeCompressError(f"task {self.name!r} ({self.kind}) has no labels, so there is no training loss",
                                fix=f"use a label-free stage: {LABEL_FREE_STAGES}")


class UnlabeledTask(ReferenceTask):
    """Inputs only (every split is a one-tensor ``TensorDataset``); metrics are agreement with the original model.

    num_classes: the model's output width, when known up front (needed to build a zoo model); otherwise taken
    from the reference model's outputs.
    """

    kind = "unlabeled"
    metric = "agreement_top1"

    def __init__(self, name: str, train: TensorDataset, val: TensorDataset, test: TensorDataset,
                 input_shape: tuple[int, ...], num_classes: int | None = None):
        super().__init__(name, train, val, test, input_shape)
        self.num_classes = num_classes

    def bind_reference(self, model: nn.Module) -> None:
        """Keep the unmodified model's outputs; its output width is the number of classes."""
        super().bind_reference(model)
        self.num_classes = self.reference["test"].shape[1]

    def evaluate(self, predict: Predict, split: str = "test", batch_size: int = 256) -> dict[str, float]:
        """Agreement with the reference outputs (empty before ``bind_reference``)."""
        if split not in self.reference:
            return {}
        return agreement_metrics(self.outputs(predict, split, batch_size), self.reference[split])
