"""Text for calibration and evaluation, and how a language model or encoder is judged: held-out perplexity,
cosine fidelity to the dense model's sentence embeddings, and a generated sample.

Text: the Python documentation topics in the standard library, split by topic (see
:mod:`edgecompress.tasks.text`): calibration windows come from the ``train`` topics, evaluation windows from the
``heldout`` topics (validation and test together, about 38k SmolLM2 tokens; nothing here tunes on them), tokenized by
the model's own tokenizer as one stream per split (topics joined by blank lines, as perplexity benchmarks do with
WikiText) and cut into full windows of ``length`` tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.tasks.embedding import pooled, retrieval_top1
from edgecompress.tasks.lm import next_token_nll
from edgecompress.tasks.text import python_docs, sequences, split_documents


def windows(tokenizer, split: str, length: int, limit: int | None = None, documents: list[str] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Full ``length``-token windows (ids, mask) of one split (train, val, test or heldout) of the documents
    (default: the Python docs)."""
    splits = split_documents(documents or python_docs())
    splits["heldout"] = splits["val"] + splits["test"]
    stream = "\n\n".join(splits[split])
    ids, mask = sequences([stream], lambda t: tokenizer(t, add_special_tokens=False)["input_ids"], length)
    full = mask.all(1)
    ids, mask = ids[full], mask[full]
    if limit is not None:
        _enough(f"the {split} text", len(ids), length, limit)
    return ids[:limit], mask[:limit]


def _enough(text: str, windows: int, length: int, asked: int) -> None:
    if windows < asked:
        raise EdgeCompressError(f"{text} gives {windows} windows of {length} tokens, fewer than the {asked} asked "
                                "for", where="samples", fix="ask for fewer or shorter sequences, or give more text")


def calibration_batches(tokenizer, samples: int, length: int, batch_size: int, seed: int = 0,
                        documents: list[str] | None = None) -> list[dict[str, torch.Tensor]]:
    """``samples`` calibration windows from the training text, drawn reproducibly, as model-input batches."""
    ids, mask = windows(tokenizer, "train", length, None, documents)
    _enough("the calibration text", len(ids), length, samples)
    pick = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))[:samples]
    return [{"input_ids": ids[pick[i:i + batch_size]], "attention_mask": mask[pick[i:i + batch_size]]}
            for i in range(0, samples, batch_size)]


def perplexity(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) of a causal LM on the windows."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            b_ids, b_mask = ids[i:i + batch_size].to(device), mask[i:i + batch_size].to(device)
            logits = model(input_ids=b_ids, attention_mask=b_mask, use_cache=False).logits
            nll, n = next_token_nll(logits, b_ids, b_mask)
            total, count = total + float(nll), count + n
    return math.exp(total / max(count, 1))


def embeddings(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Mean-pooled (as the embedding task pools), L2-normalised sentence embeddings of an encoder."""
    out = []
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            h = model(input_ids=ids[i:i + batch_size], attention_mask=mask[i:i + batch_size]).last_hidden_state
            out.append(torch.from_numpy(pooled(h.numpy(), mask[i:i + batch_size].numpy())))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def _queries_then_passages(vectors: torch.Tensor) -> np.ndarray:
    """Window k (even) is a query and window k + 1 its passage: all queries, then their passages in order."""
    n = len(vectors) // 2
    return torch.cat([vectors[0:2 * n:2], vectors[1:2 * n:2]]).numpy()


def fidelity(dense: torch.Tensor, pruned: torch.Tensor) -> dict[str, float]:
    """Cosine of each pruned embedding to the dense one, and top-1 retrieval (each query window must find its
    passage, the next window, among all passages) by the pruned and by the dense embeddings."""
    cos = (dense * pruned).sum(-1)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "retrieval_top1": retrieval_top1(_queries_then_passages(pruned)),
            "dense_retrieval_top1": retrieval_top1(_queries_then_passages(dense))}


def generate(model: nn.Module, tokenizer, prompt: str, new_tokens: int = 24) -> str:
    """Greedy continuation of ``prompt``."""
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or 0)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
