"""Classification: labelled inputs, cross-entropy loss, accuracy and macro-F1."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from edgecompress.tasks.base import Predict, Task


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (scikit-learn does the counting)."""
    from sklearn.metrics import accuracy_score, f1_score

    pred = logits.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "f1_macro": float(f1_score(labels, pred, average="macro", labels=list(range(num_classes)), zero_division=0)),
    }


class ClassificationTask(Task):
    """Inputs with integer class labels (the second tensor of every split).

    has_labels: False for shaped synthetic data (latency/size-only runs): metrics are then skipped and the
    loss refuses to train on the random labels.
    """

    kind = "classification"
    metric = "accuracy"

    def __init__(self, name: str, train: TensorDataset, val: TensorDataset, test: TensorDataset,
                 input_shape: tuple[int, ...], num_classes: int, has_labels: bool = True):
        super().__init__(name, train, val, test, input_shape)
        self.num_classes, self._has_labels = num_classes, has_labels

    @property
    def has_labels(self) -> bool:
        return self._has_labels

    def output_loss(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return F.cross_entropy(outputs, batch[1])

    def chance_accuracy(self, split: str = "test") -> float:
        """The accuracy of always answering the split's most frequent class (about what an untrained model scores)."""
        labels = self.split(split).tensors[1]
        return float(torch.bincount(labels).max()) / len(labels)

    def evaluate(self, predict: Predict, split: str = "test", batch_size: int = 256) -> dict[str, float]:
        """Accuracy and macro-F1 of ``predict`` on a split (empty without labels)."""
        if not self.has_labels:
            return {}
        logits = self.outputs(predict, split, batch_size)
        return classification_metrics(logits, self.split(split).tensors[1].numpy(), self.num_classes)
