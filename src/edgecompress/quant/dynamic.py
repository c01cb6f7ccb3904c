"""``quant.dynamic``: INT8 dynamic quantization — int8 weights stored in the artifact, activations quantized on
the fly from each input's own range, so no calibration data is needed.

* **onnxruntime** (format ``onnx``): ``quantize_dynamic`` rewrites Conv into ConvInteger and MatMul/Gemm into
  MatMulInteger behind DynamicQuantizeLinear; other ops stay float.
* **executorch** (format ``executorch``): ExecuTorch's XNNPACK quantizer in its dynamic recipe (``nn.Linear``
  only), lowered to XNNPACK -> ``model_int8.pte`` (``quant/xnnpack.py``).
* **torchao** (format ``pytorch``): ``quantize_(model, Int8DynamicActivationInt8WeightConfig())`` swaps the
  weights of ``nn.Linear`` layers only (convolutions stay float), then ``torch.export`` writes a ``.pt2``.

Speed: on CPUs without VNNI (AVX2 only) dynamic INT8 is usually *slower* than FP32 — the project measured
ResNet-18 in ONNX Runtime at 35.6 ms vs 15.8 ms FP32 (batch 1, 2 threads) — because the per-call activation
quantization and int8 kernels without VNNI cost more than they save. It shrinks the file ~4x; use ``quant.ptq``
for static QDQ, which ONNX Runtime runs faster on VNNI/AMX CPUs.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from edgecompress.context import StageContext, StageOutput
from edgecompress.export.artifact import Artifact
from edgecompress.quant.ptq import (
    WEIGHTED_ONNX_OPS,
    check_module_names,
    fp32_onnx,
    in_module,
    onnx_nodes_to_exclude,
    resolve_backend,
    save_program,
)
from edgecompress.quant.xnnpack import quantize_to_pte
from edgecompress.registry import ALL_TASK_KINDS, TOKEN_TASK_KINDS, StageConfig, register


class DynamicConfig(StageConfig):
    """Settings of ``quant.dynamic``."""

    per_channel: bool = Field(True, description="one weight scale per output channel / row (else one per tensor)")
    exclude: list[str] = Field(
        [], max_length=10_000,
        description="module names (as in model.named_modules(), with everything inside) or ONNX node names "
                    "kept in float",
    )
    backend: Literal["auto", "onnxruntime", "torchao", "executorch"] = Field(
        "auto", description="auto: follow export.format (onnx -> onnxruntime, pytorch -> torchao, "
                            "executorch -> executorch: XNNPACK dynamic quantizer, linear layers only)",
    )


@register("quant.dynamic", DynamicConfig, produces_artifact=True, task_kinds=(*ALL_TASK_KINDS, *TOKEN_TASK_KINDS))
def dynamic(model: nn.Module, config: DynamicConfig, ctx: StageContext) -> StageOutput:
    """Dynamic INT8 quantization (int8 weights, activations quantized per call; no calibration; slower without VNNI).

    ONNX Runtime covers Conv, MatMul and Gemm; torchao covers nn.Linear only. The float model is returned
    unchanged beside the INT8 artifact. Language models (token inputs) are quantized through ONNX Runtime: every
    projection's MatMul becomes MatMulInteger.
    """
    example = ctx.example_inputs(2)
    backend = resolve_backend(config.backend, ctx)
    if backend == "onnxruntime":
        artifact, report = _dynamic_onnx(model, config, ctx, example)
    elif backend == "executorch":
        artifact, report = quantize_to_pte(model, ctx, None, per_channel=config.per_channel, exclude=config.exclude,
                                           stage="quant.dynamic")
    else:
        artifact, report = _dynamic_torchao(model, config, ctx, example)
    ctx.info.update(backend=backend, **report)
    return StageOutput(model, artifact)


def _dynamic_onnx(
    model: nn.Module, config: DynamicConfig, ctx: StageContext, example: torch.Tensor
) -> tuple[Artifact, dict]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    one = ctx.example_inputs(1) if isinstance(example, dict) else example[:1]  # token inputs: a dict of tensors
    fp32, prep = fp32_onnx(model, ctx, one)
    out = prep.parent / "model_int8.onnx"
    tmp = out.with_suffix(".tmp.onnx")
    quantize_dynamic(
        str(prep), str(tmp), per_channel=config.per_channel, weight_type=QuantType.QInt8,
        nodes_to_exclude=onnx_nodes_to_exclude(onnx.load(str(prep)), config.exclude, "quant.dynamic"),
    )
    tmp.replace(out)
    prep.unlink()
    nodes = onnx.load(str(out)).graph.node
    return Artifact(out, "onnx", "onnxruntime", "int8", details=fp32.details), {
        "quantized_ops": dict(Counter(n.op_type for n in nodes if n.op_type in ("ConvInteger", "MatMulInteger"))),
        "float_nodes": [f"{n.name} ({n.op_type})" for n in nodes if n.op_type in WEIGHTED_ONNX_OPS],
        "fp32_bytes": fp32.size_bytes,
        "int8_bytes": out.stat().st_size,
    }


def _dynamic_torchao(
    model: nn.Module, config: DynamicConfig, ctx: StageContext, example: torch.Tensor
) -> tuple[Artifact, dict]:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, PerTensor, quantize_

    model = copy.deepcopy(model).eval()
    excluded = check_module_names(model, config.exclude, "quant.dynamic")

    def selected(module: nn.Module, name: str) -> bool:
        return isinstance(module, nn.Linear) and not any(in_module(name, e) for e in excluded)

    weighted = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))}
    quantized = [name for name, m in weighted.items() if selected(m, name)]
    granularity = PerRow() if config.per_channel else PerTensor()
    quantize_(model, Int8DynamicActivationInt8WeightConfig(granularity=granularity), filter_fn=selected)
    artifact = save_program(model, example, ctx.scratch_dir() / "model_int8.pt2", "int8")
    return artifact, {
        "quantized_ops": {"linear": len(quantized)},
        "float_nodes": [f"{name} ({type(m).__name__})" for name, m in weighted.items() if name not in quantized],
        "int8_bytes": artifact.size_bytes,
    }
