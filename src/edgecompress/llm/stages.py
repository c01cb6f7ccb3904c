"""The language-model stages: ``prune.llm`` and ``prune.composite``, on causal-LM and embedding tasks (text data
tokenized by the model's own tokenizer: ``data: {dataset: text, tokenizer: ...}``)."""

from __future__ import annotations

from torch import nn

from edgecompress.context import StageContext
from edgecompress.llm.composite import CompositeConfig, composite
from edgecompress.llm.prune import LLMPruneConfig, prune_llm
from edgecompress.registry import CPU_AND_CUDA, register

LM_TASKS = ("causal_lm", "embedding")


def _batches(ctx: StageContext, stage: str, samples: int, batch_size: int) -> list[dict]:
    inputs = ctx.require_task(stage).calibration(samples, seed=ctx.seed)
    n = len(inputs["input_ids"])
    return [{k: v[i:i + batch_size] for k, v in inputs.items()} for i in range(0, n, batch_size)]


@register("prune.llm", LLMPruneConfig, task_kinds=LM_TASKS, devices=CPU_AND_CUDA)
def prune_llm_stage(model: nn.Module, config: LLMPruneConfig, ctx: StageContext) -> nn.Module:
    """Zero a share of every transformer projection (q, k, v, o, gate, up, down): magnitude, Wanda or SparseGPT,
    unstructured or N:M, allocated uniformly, per layer (OWL) or per projection (Mosaic), layer by layer on
    calibration text with outputs propagated through the pruned layers."""
    result = prune_llm(model, _batches(ctx, "prune.llm", config.samples, config.batch_size), config, ctx.device)
    ctx.info.update(sparsity=round(result.sparsity, 4), prune_seconds=round(result.seconds, 2),
                    projection_sparsity={k: round(v, 4) for k, v in result.reached.items()})
    return model


@register("prune.composite", CompositeConfig, task_kinds=LM_TASKS, devices=CPU_AND_CUDA)
def composite_stage(model: nn.Module, config: CompositeConfig, ctx: StageContext) -> nn.Module:
    """Physically remove the least-used MLP neurons and attention key-value groups from every transformer layer
    (empty ones first), re-solving the consumer projections by least squares: a smaller model that saves and
    reloads with plain ``transformers``."""
    result = composite(model, _batches(ctx, "prune.composite", config.samples, config.batch_size), config, ctx.device)
    ctx.info.update(parameters_before=result.parameters_before, parameters_after=result.parameters_after,
                    mlp_neurons=list(result.mlp_neurons), kv_groups=list(result.kv_groups))
    return model
