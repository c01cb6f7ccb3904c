"""Causal language modelling: token sequences with attention masks, next-token loss, perplexity on held-out text.

The next token is the label (self-supervised), so the task has labels in the sense stages care about:
fine-tuning trains on the next-token loss. ``metric`` is perplexity, where lower is better.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from edgecompress.tasks.base import Predict
from edgecompress.tasks.text import TokenTask


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of each real next token, and how many there were."""
    target, keep = ids[:, 1:], mask[:, 1:].bool()
    nll = F.cross_entropy(logits[:, :-1][keep].float(), target[keep], reduction="sum")
    return nll, int(keep.sum())


class CausalLMTask(TokenTask):
    """The model maps token ids (and mask) to logits ``[N, L, vocab]``."""

    kind = "causal_lm"
    metric = "perplexity"
    higher_is_better = False

    @property
    def has_labels(self) -> bool:
        return True  # the next token

    def output_loss(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        nll, tokens = next_token_nll(outputs, batch[0], batch[1])
        return nll / max(tokens, 1)

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
