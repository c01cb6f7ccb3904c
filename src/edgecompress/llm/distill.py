"""``recover.kd`` on language models: train the pruned model towards the dense model's next-token distribution on
calibration text (label-free: the loss is the KL divergence between the two models' softened distributions at
every real token, never the text's own next token), with the pruned weights held at zero.

Every parameter trains (embeddings, norms, projections) with Adam; the teacher's distributions are recomputed
each step (caching them would take ``tokens x vocabulary`` floats). Encoders (``embedding`` tasks) distill their
last hidden state instead (mean squared error per real token), as there is no next-token distribution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from edgecompress.llm.arch import transformer
from edgecompress.train import mask_zeros


@dataclass
class DistillLLMResult:
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    steps: int = 0
    tokens: int = 0  # real tokens per epoch
    seconds: float = 0.0


def _loss(student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor], t: float, causal: bool
          ) -> torch.Tensor:
    """Mean over real tokens of ``t^2 KL(teacher || student)`` at temperature ``t`` (decoders), or of the squared
    distance between the last hidden states (encoders)."""
    real = batch["attention_mask"].bool()
    kwargs = {"use_cache": False} if causal else {}
    with torch.no_grad():
        out = teacher(**batch, **kwargs)
        target = F.log_softmax(out.logits[real] / t, -1) if causal else out.last_hidden_state[real]
    out = student(**batch, **kwargs)
    if not causal:
        return F.mse_loss(out.last_hidden_state[real], target)
    return F.kl_div(F.log_softmax(out.logits[real] / t, -1), target, log_target=True, reduction="batchmean") * t * t


def distill_llm(model: nn.Module, dense: nn.Module, batches: list[dict[str, torch.Tensor]], epochs: int,
                lr: float, temperature: float = 1.0, seed: int = 0) -> DistillLLMResult:
    """Train ``model`` in place towards ``dense`` on the calibration ``batches`` (one Adam step each, in a seeded
    random order every epoch), keeping its zero weights at zero (see the module docstring)."""
    start = time.perf_counter()
    causal = transformer(model).family.kind == "decoder"
    device = next(model.parameters()).device
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    dense.eval()
    model.eval()  # no dropout: the teacher runs the same way
    masked = mask_zeros(model)
    params = list(model.parameters())
    trainable = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    result = DistillLLMResult(tokens=sum(int(b["attention_mask"].sum()) for b in batches))
    try:
        for _ in range(epochs):
            total = 0.0
            for i in torch.randperm(len(batches), generator=gen).tolist():
                loss = _loss(model, dense, batches[i], temperature, causal)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * int(batches[i]["attention_mask"].sum())
                result.steps += 1
            result.losses.append(total / max(result.tokens, 1))
    finally:
        for m in masked:
            torch.nn.utils.prune.remove(m, "weight")
        for p, flag in zip(params, trainable):
            p.requires_grad_(flag)
    result.seconds = time.perf_counter() - start
    return result
