"""Embedding fidelity: a model that maps text to vectors, judged against the unmodified model.

Metrics: ``embedding_cosine`` (mean cosine between each text's vector and the original model's vector for it)
and ``retrieval_top1`` on the test split, which holds query/passage pairs (a passage is the text that follows
its query in the same document): the share of queries whose most similar passage, among all test passages, is
their own. The original model's retrieval accuracy is ``retrieval_top1_reference``. No labels are needed, so
stages that train on labels refuse this task; a token-level output ``[N, L, D]`` is mean-pooled over the mask.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgecompress.errors import EdgeCompressError
from edgecompress.tasks.base import SPLITS, Inputs, Predict, Task, torch_predictor
from edgecompress.tasks.unlabeled import LABEL_FREE_STAGES


def pooled(vectors: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence vectors ``[N, D]``: as given, or mean-pooled over the real tokens of ``[N, L, D]`` outputs."""
    if vectors.ndim == 2:
        return vectors
    weights = mask[..., None].astype(vectors.dtype)
    return (vectors * weights).sum(1) / np.maximum(weights.sum(1), 1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def retrieval_top1(vectors: np.ndarray) -> float:
    """``vectors`` holds n queries then their n passages: the share of queries whose nearest passage is theirs."""
    n = len(vectors) // 2
    scores = _unit(vectors[:n]) @ _unit(vectors[n:2 * n]).T
    return float(np.mean(scores.argmax(1) == np.arange(n)))


class EmbeddingTask(Task):
    """Splits are ``TensorDataset(input_ids, attention_mask)``; the test split is n queries then n passages."""

    kind = "embedding"
    metric = "embedding_cosine"

    def __init__(self, name: str, train: TensorDataset, val: TensorDataset, test: TensorDataset, vocab_size: int):
        super().__init__(name, train, val, test, tuple(train.tensors[0].shape[1:]))
        self.vocab_size = vocab_size
        self.reference: dict[str, np.ndarray] = {}

    @property
    def can_evaluate(self) -> bool:
        return bool(self.reference)

    def inputs(self, batch: tuple[torch.Tensor, ...]) -> Inputs:
        return {"input_ids": batch[0], "attention_mask": batch[1]}

    def example_inputs(self, batch: int = 1) -> Inputs:
        return self.inputs(tuple(t[:batch].clone() for t in self.test.tensors))

    def random_inputs(self, batch: int = 1, seed: int = 0) -> Inputs:
        ids = torch.randint(self.vocab_size, (batch, *self.input_shape), generator=torch.Generator().manual_seed(seed))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def calibration(self, n: int, seed: int = 0, labels: bool = False) -> Inputs:
        return self.inputs(super().calibration(n, seed, labels=True))

    def vectors(self, predict: Predict, split: str, batch_size: int = 32) -> np.ndarray:
        ids, mask = self.split(split).tensors
        self.record(split)
        return np.concatenate([pooled(np.asarray(predict({"input_ids": ids[i:i + batch_size].numpy(),
                                                          "attention_mask": mask[i:i + batch_size].numpy()})),
                                      mask[i:i + batch_size].numpy()) for i in range(0, len(ids), batch_size)])

    def bind_reference(self, model: nn.Module) -> None:
        predict = torch_predictor(model)
        self.reference = {split: self.vectors(predict, split) for split in SPLITS if split != "train"}

    def output_loss(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise EdgeCompressError(f"task {self.name!r} (embedding fidelity) has no labels, so there is no training loss",
                                fix=f"use a label-free stage: {LABEL_FREE_STAGES}")

    def evaluate(self, predict: Predict, split: str = "test", batch_size: int = 32) -> dict[str, float]:
        """Cosine to the reference vectors; on the test split also retrieval accuracy (empty before binding)."""
        if split not in self.reference:
            return {}
        got, ref = self.vectors(predict, split, batch_size), self.reference[split]
        result = {"embedding_cosine": float(np.mean(np.sum(_unit(got) * _unit(ref), axis=1)))}
        if split == "test":
            result.update(retrieval_top1=retrieval_top1(got), retrieval_top1_reference=retrieval_top1(ref))
        return result
