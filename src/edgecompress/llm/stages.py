"""The language-model stages: ``prune.llm`` and ``prune.composite``, and the transformer variants of
``recover.mimic``, ``recover.kd`` and ``quant.weight`` (registered for the token task kinds beside their tensor
versions), on causal-LM and embedding tasks (text data tokenized by the model's own tokenizer:
``data: {dataset: text, tokenizer: ...}``)."""

from __future__ import annotations

from torch import nn

from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.llm.composite import CompositeConfig, composite
from edgecompress.llm.distill import distill_llm
from edgecompress.llm.mimic import mimic_llm
from edgecompress.llm.prune import LLMPruneConfig, prune_llm
from edgecompress.llm.quantize import gptq_llm
from edgecompress.quant.weights.quantizer import QuantSpec
from edgecompress.quant.weightonly import GPTQ_NOTE, WeightQuantConfig
from edgecompress.recover.bias import nothing_to_do
from edgecompress.recover.kd import KDConfig
from edgecompress.recover.mimic import MimicConfig
from edgecompress.registry import CPU_AND_CUDA, TOKEN_TASK_KINDS, register

LM_TASKS = TOKEN_TASK_KINDS
LM_QUANT_BATCH = 8  # calibration sequences per forward pass of quant.weight (its config has no batch size)


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


@register("recover.mimic", MimicConfig, task_kinds=LM_TASKS)
def mimic_stage(model: nn.Module, config: MimicConfig, ctx: StageContext) -> nn.Module:
    """Label-free recovery of a pruned transformer: each projection's surviving weights re-solved by least squares
    to reproduce the dense model's projection outputs on calibration text, layer by layer (masks kept)."""
    dense = ctx.require_teacher("recover.mimic").eval()
    _text_only(config, "recover.mimic")
    if nothing_to_do(model, dense, ctx, "recover.mimic"):
        return model
    result = mimic_llm(model, dense, _batches(ctx, "recover.mimic", config.calib_samples, config.batch_size),
                       config.damping, ctx.device)
    ctx.info.update(mimic_seconds=round(result.seconds, 2), tokens_used=result.tokens, labels_used=0,
                    backprop="none", skipped=result.skipped,
                    cg_residual_max=round(max(result.residuals.values(), default=0.0), 6),
                    relative_error={k: [round(b, 5), round(a, 5)] for k, (b, a) in result.errors.items()})
    return model


@register("recover.kd", KDConfig, task_kinds=LM_TASKS, devices=CPU_AND_CUDA)
def kd_stage(model: nn.Module, config: KDConfig, ctx: StageContext) -> nn.Module:
    """Label-free distillation of a pruned transformer on calibration text: KL to the dense model's next-token
    distribution (encoders: its hidden states), pruned weights kept at zero."""
    dense = ctx.require_teacher("recover.kd").eval()
    _text_only(config, "recover.kd")
    if nothing_to_do(model, dense, ctx, "recover.kd"):
        return model
    result = distill_llm(model, dense, _batches(ctx, "recover.kd", config.calib_samples, config.step_batch),
                         config.epochs, config.lr, config.temperature, ctx.seed)
    ctx.info.update(loss_per_epoch=[round(v, 6) for v in result.losses], steps=result.steps,
                    tokens_per_epoch=result.tokens, kd_seconds=round(result.seconds, 2), labels_used=0,
                    backprop="whole model, towards the dense model's outputs")
    return model


@register("quant.weight", WeightQuantConfig, produces_artifact=True, task_kinds=LM_TASKS)
def weight_quant_stage(model: nn.Module, config: WeightQuantConfig, ctx: StageContext) -> nn.Module:
    """Weight-only quantization of every transformer projection (GPTQ or round to nearest, per channel or
    group-wise). The exported model holds the dequantized float weights; the packed size is reported."""
    spec = QuantSpec(config.bits, config.group_size, config.symmetric)
    batches = _batches(ctx, "quant.weight", config.calib_samples, LM_QUANT_BATCH)
    result = gptq_llm(model, batches, spec, ctx.device, config.damp, config.algorithm, config.act_order,
                      config.exclude)
    ctx.info.update(bits=config.bits, group_size=config.group_size, symmetric=config.symmetric,
                    algorithm=GPTQ_NOTE if config.algorithm == "gptq" else "round to nearest",
                    weight_bytes_packed=result.nbytes, weight_bytes_fp32=result.float_bytes,
                    float_projections=result.floating,
                    artifact="float32 weights equal to the dequantized codes (ONNX Runtime runs them as float); "
                             "weight_bytes_packed is what the codes, scales and zero points take")
    return model


def _text_only(config, stage: str) -> None:
    if config.data == "synthetic":
        raise EdgeCompressError(f"{stage} on a language model calibrates on the task's text; synthetic inputs come "
                                "from BatchNorm statistics, which transformers do not have", where="data",
                                fix="use data: task (or auto)")
