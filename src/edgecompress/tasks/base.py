"""The Task contract: what a model does and how it is judged, whatever the kind of problem.

A task owns its data splits (``train``/``val``/``test``) and answers, for the rest of edgecompress:
- ``loss(model, batch)``: the training loss of one batch from ``loader`` (training, Taylor/SNIP/GraSP,
  Reconvene), from ``output_loss(outputs, batch)``;
- ``evaluate(predict, split)``: the task's metrics of a predict function (PyTorch model or deployed artifact);
- ``example_inputs(batch)`` / ``random_inputs(batch)``: real inputs for export, random ones for timing;
- ``calibration(n, seed, labels)``: ``n`` reproducible training samples, unlabeled unless asked;
- ``bind_reference(model)``: called once with the unmodified model (tasks judged against it keep it).

``metric`` names the headline metric in ``evaluate``'s result: the one that targets such as
``max_accuracy_drop`` and the summary's drop are computed on (``higher_is_better`` says which way is good).
Model inputs are a tensor, a tuple or a dict of tensors (``Inputs``); ``call(model, inputs)`` runs a model on
them and returns its output tensor (the ``logits`` of a Hugging Face output, else its ``last_hidden_state``; the
first of a tuple).
A new task kind is one subclass in this package.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

Inputs = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
Predict = Callable[..., np.ndarray]  # numpy inputs (an array, or a dict of arrays) -> outputs
SPLITS = ("train", "val", "test")


def call(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """``model`` on ``inputs`` (a tensor, a tuple: positional, a dict: keyword arguments); its output tensor."""
    out = model(**inputs) if isinstance(inputs, dict) else model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    out = getattr(out, "logits", None) if not torch.is_tensor(out) and hasattr(out, "logits") else out
    if not torch.is_tensor(out) and hasattr(out, "last_hidden_state"):  # a Hugging Face encoder's output
        out = out.last_hidden_state
    return out[0] if isinstance(out, (tuple, list)) else out


class _Recorded(Dataset):
    """A split as a loader reads it, noting which samples were read (for the cost report of a stage)."""

    def __init__(self, data: TensorDataset, seen: set[int]):
        self.data, self.seen = data, seen

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        self.seen.add(int(index))
        return self.data[index]


class Task(ABC):
    """Data splits of in-memory tensors plus how a model is trained and judged on them.

    train/val/test: ``TensorDataset``s whose first tensor holds the inputs ``[N, *input_shape]`` (labelled
    tasks add the labels as the second tensor).
    """

    kind: ClassVar[str]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True

    def __init__(self, name: str, train: TensorDataset, val: TensorDataset, test: TensorDataset,
                 input_shape: tuple[int, ...]):
        self.name, self.train, self.val, self.test = name, train, val, test
        self.input_shape = tuple(input_shape)
        self.usage: dict[str, set[int]] = {split: set() for split in SPLITS}  # samples read, by split

    def record(self, split: str, indices: torch.Tensor | range | None = None) -> None:
        """Note that samples of ``split`` were used (all of them when ``indices`` is None)."""
        self.usage[split].update(range(len(self.split(split))) if indices is None else (int(i) for i in indices))

    def reset_usage(self) -> dict[str, int]:
        """How many distinct samples of each split were used since the last reset; starts a new count."""
        used = {split: len(seen) for split, seen in self.usage.items()}
        for seen in self.usage.values():
            seen.clear()
        return used

    @property
    def has_labels(self) -> bool:
        return False

    @property
    def can_evaluate(self) -> bool:
        """Whether ``evaluate`` has anything to judge by (labels, or a bound reference)."""
        return self.has_labels

    def with_splits(self, name: str, **splits: TensorDataset) -> Task:
        """A copy of the task named ``name`` with some splits replaced (e.g. a subset for a quick search)."""
        task = copy.copy(self)
        task.name = name
        for split, data in splits.items():
            self.split(split)  # validates the name
            setattr(task, split, data)
        return task

    def split(self, name: str) -> TensorDataset:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}: use train, val or test")
        return getattr(self, name)

    def loader(self, split: str, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
        gen = torch.Generator().manual_seed(seed)
        data = _Recorded(self.split(split), self.usage[split])
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen)

    def calibration(self, n: int, seed: int = 0, labels: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``n`` training samples drawn reproducibly: the inputs, or with ``labels`` every tensor of the split."""
        tensors = self.train.tensors if labels else self.train.tensors[:1]
        idx = torch.randperm(len(tensors[0]), generator=torch.Generator().manual_seed(seed))[: min(n, len(tensors[0]))]
        self.record("train", idx)
        picked = tuple(t[idx] for t in tensors)
        return picked if labels else picked[0]

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return self.test.tensors[0][:batch].clone()

    def random_inputs(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        """Standard-normal inputs of the task's shape: for timing only, never for metrics."""
        return torch.randn(batch, *self.input_shape, generator=torch.Generator().manual_seed(seed))

    def bind_reference(self, model: nn.Module) -> None:
        """Called once with the unmodified model; tasks that are judged against it keep what they need."""

    def inputs(self, batch: tuple[torch.Tensor, ...]) -> Inputs:
        """The model inputs of one batch as ``loader`` yields it."""
        return batch[0]

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The training loss of one batch as ``loader`` yields it."""
        return self.output_loss(call(model, self.inputs(batch)), batch)

    @abstractmethod
    def output_loss(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The training loss of the model's ``outputs`` for ``batch`` (lets distillation reuse one forward)."""

    @abstractmethod
    def evaluate(self, predict: Predict, split: str = "test", batch_size: int = 256) -> dict[str, float]:
        """The task's metrics of ``predict`` on a split (empty when the task cannot judge, e.g. no labels)."""

    def evaluate_model(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        return self.evaluate(torch_predictor(model), split)

    def outputs(self, predict: Predict, split: str, batch_size: int = 256) -> np.ndarray:
        """``predict`` over a whole split, batch by batch."""
        x = self.split(split).tensors[0]
        self.record(split)
        return np.concatenate([predict(x[i:i + batch_size].numpy()) for i in range(0, len(x), batch_size)])


def torch_predictor(model: nn.Module) -> Predict:
    """Wrap a PyTorch model as a numpy predict function (eval mode, no grad, on the model's device); it takes an
    array, or a dict of arrays for a model with keyword inputs (token ids and attention mask)."""

    def predict(x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        was_training = model.training
        model.eval()
        device = next(model.parameters(), torch.empty(0)).device
        inputs = ({k: torch.from_numpy(v).to(device) for k, v in x.items()} if isinstance(x, dict)
                  else torch.from_numpy(x).to(device))
        with torch.no_grad():
            out = call(model, inputs).float().cpu().numpy()
        model.train(was_training)
        return out

    return predict
