"""A Task: what the model does and how it is judged (data splits, input shape, metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from edgecompress.data.metrics import classification_metrics

Predict = Callable[[np.ndarray], np.ndarray]  # float32 batch -> logits


@dataclass
class Task:
    """Classification task over in-memory tensors.

    train/val/test: TensorDataset(inputs float32 [N, *input_shape], labels int64 [N]).
    has_labels: False for shaped synthetic data (latency/size-only runs): metrics are then skipped.
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]
    num_classes: int
    has_labels: bool = True
    kind: str = "classification"

    def split(self, name: str) -> TensorDataset:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}: use train, val or test")
        return getattr(self, name)

    def loader(self, split: str, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(self.split(split), batch_size=batch_size, shuffle=shuffle, generator=gen)

    def calibration(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` unlabeled training inputs, drawn reproducibly (labels are never used)."""
        x = self.train.tensors[0]
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: min(n, len(x))]
        return x[idx]

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return self.test.tensors[0][:batch].clone()

    def evaluate(self, predict: Predict, split: str = "test", batch_size: int = 256) -> dict[str, float]:
        """Metrics of ``predict`` on a split: accuracy and macro-F1 (empty without labels)."""
        if not self.has_labels:
            return {}
        x, y = self.split(split).tensors
        logits = [predict(x[i : i + batch_size].numpy()) for i in range(0, len(x), batch_size)]
        return classification_metrics(np.concatenate(logits), y.numpy(), self.num_classes)

    def evaluate_model(self, model: torch.nn.Module, split: str = "test") -> dict[str, float]:
        return self.evaluate(torch_predictor(model), split)


def torch_predictor(model: torch.nn.Module) -> Predict:
    """Wrap a PyTorch model as a numpy predict function (eval mode, no grad)."""

    def predict(x: np.ndarray) -> np.ndarray:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model(torch.from_numpy(x)).float().numpy()
        model.train(was_training)
        return out

    return predict
