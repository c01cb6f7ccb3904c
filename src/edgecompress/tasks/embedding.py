"""Embedding fidelity: a model that maps text to vectors, judged against the unmodified model.

Metrics: ``embedding_cosine`` (mean cosine between each text's vector and the original model's vector for it)
and ``retrieval_top1`` on the test split, which holds query/passage pairs (a passage is the text that follows
its query in the same document): the share of queries whose most similar passage, among all test passages, is
their own. The original model's retrieval accuracy is ``retrieval_top1_reference``. No labels are needed, so
stages that train on labels refuse this task; a token-level output ``[N, L, D]`` is mean-pooled over the mask.
"""

from __future__ import annotations

import numpy as np

from edgecompress.tasks.base import Predict
from edgecompress.tasks.text import TokenTask
from edgecompress.tasks.unlabeled import ReferenceTask


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


class EmbeddingTask(TokenTask, ReferenceTask):
    """The test split is n queries then n passages; the reference kept is the original model's vectors."""

    kind = "embedding"
    metric = "embedding_cosine"

    def vectors(self, predict: Predict, split: str, batch_size: int = 32) -> np.ndarray:
        ids, mask = self.split(split).tensors
        self.record(split)
        return np.concatenate([pooled(np.asarray(predict({"input_ids": ids[i:i + batch_size].numpy(),
                                                          "attention_mask": mask[i:i + batch_size].numpy()})),
                                      mask[i:i + batch_size].numpy()) for i in range(0, len(ids), batch_size)])

    def reference_outputs(self, predict: Predict, split: str) -> np.ndarray:
        return self.vectors(predict, split)

    def evaluate(self, predict: Predict, split: str = "test", batch_size: int = 32) -> dict[str, float]:
        """Cosine to the reference vectors; on the test split also retrieval accuracy (empty before binding)."""
        if split not in self.reference:
            return {}
        got, ref = self.vectors(predict, split, batch_size), self.reference[split]
        result = {"embedding_cosine": float(np.mean(np.sum(_unit(got) * _unit(ref), axis=1)))}
        if split == "test":
            result.update(retrieval_top1=retrieval_top1(got), retrieval_top1_reference=retrieval_top1(ref))
        return result
