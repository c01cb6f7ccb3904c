"""Causal language modelling: token sequences with attention masks, next-token loss, perplexity on held-out text.

The next token is the label (self-supervised), so the task has labels in the sense stages care about:
fine-tuning trains on the next-token loss. ``metric`` is perplexity, where lower is better.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from edgecompress.tasks.base import Inputs, Predict, Task


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of each real next token, and how many there were."""
    target, keep = ids[:, 1:], mask[:, 1:].bool()
    nll = F.cross_entropy(logits[:, :-1][keep].float(), target[keep], reduction="sum")
    return nll, int(keep.sum())


class CausalLMTask(Task):
    """Every split is ``TensorDataset(input_ids [N, L], attention_mask [N, L])``; the model maps token ids (and
    mask) to logits ``[N, L, vocab]``."""

    kind = "causal_lm"
    metric = "perplexity"
    higher_is_better = False

    def __init__(self, name: str, train: TensorDataset, val: TensorDataset, test: TensorDataset, vocab_size: int):
        super().__init__(name, train, val, test, tuple(train.tensors[0].shape[1:]))
        self.vocab_size = vocab_size

    @property
    def has_labels(self) -> bool:
        return True  # the next token

    def inputs(self, batch: tuple[torch.Tensor, ...]) -> Inputs:
        return {"input_ids": batch[0], "attention_mask": batch[1]}

    def output_loss(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        nll, tokens = next_token_nll(outputs, batch[0], batch[1])
        return nll / max(tokens, 1)

    def example_inputs(self, batch: int = 1) -> Inputs:
        return self.inputs(tuple(t[:batch].clone() for t in self.test.tensors))

    def random_inputs(self, batch: int = 1, seed: int = 0) -> Inputs:
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(self.vocab_size, (batch, *self.input_shape), generator=gen)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def calibration(self, n: int, seed: int = 0, labels: bool = False) -> Inputs:
        """``n`` training sequences as model inputs (ids and mask), drawn reproducibly."""
        return self.inputs(super().calibration(n, seed, labels=True))

    def evaluate(self, predict: Predict, split: str = "test", batch_size: int = 16) -> dict[str, float]:
        """Perplexity (and mean NLL in nats, token count) of ``predict``'s logits on a split."""
        ids, mask = self.split(split).tensors
        self.record(split)
        total, tokens = 0.0, 0
        for i in range(0, len(ids), batch_size):
            feed = {"input_ids": ids[i:i + batch_size].numpy(), "attention_mask": mask[i:i + batch_size].numpy()}
            logits = torch.from_numpy(np.asarray(predict(feed)))
            nll, count = next_token_nll(logits, ids[i:i + batch_size], mask[i:i + batch_size])
            total, tokens = total + float(nll), tokens + count
        mean = total / max(tokens, 1)
        return {"perplexity": math.exp(mean), "nll": mean, "tokens": tokens}
