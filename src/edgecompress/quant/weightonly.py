"""``quant.weight``: low-bit weight-only quantization (2-8 bits, per output channel or group-wise, round-to-nearest
or GPTQ), stored packed in the ONNX artifact; activations and arithmetic stay float32.

The settings and the quantize-export-verify path here are shared with ``quant.mixed``. BatchNorm layers are
folded into the Conv/Linear before them first, so the quantized weights are the ones the file ships. The
artifact is checked on calibration inputs: ONNX Runtime must reproduce the PyTorch model with the dequantized
weights (the difference is reported as ``onnx_max_abs_diff``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from edgecompress.calibration import MIN_CALIB_SAMPLES, calibration_samples
from edgecompress.context import StageContext, StageOutput
from edgecompress.errors import EdgeCompressError
from edgecompress.export.artifact import Artifact
from edgecompress.nn.bn import fold_batchnorms
from edgecompress.nn.layers import build_graph
from edgecompress.quant.weights import MAX_BITS, MIN_BITS, QuantSpec, quantize_layers, select_layers
from edgecompress.quant.weights.onnx import weight_bytes, write_weight_only_onnx
from edgecompress.registry import StageConfig, register

STAGE = "quant.weight"
MIN_GROUP = 8  # a smaller group stores as many scale bytes as 4-bit weight bytes, or more
GPTQ_NOTE = ("GPTQ (Frantar et al. 2022), sequential in forward order; our variant: lazy blocks are a multiple of "
             "the group so group scales see every earlier update, and act_order uses static groups")


class WeightQuantBase(StageConfig):
    """Settings shared by ``quant.weight`` and ``quant.mixed``."""

    group_size: int = Field(
        32, ge=0, le=65536,
        description="weights per scale along the flattened input (in*kh*kw for a Conv); 0: one scale per output "
                    "channel. A layer with at most this many inputs gets one scale per channel; when the group "
                    "does not divide them, the last group is smaller",
    )
    symmetric: bool = Field(True, description="scale = max|w| / (2^(b-1)-1) and no zero point (else min/max "
                                              "range with an integer zero point per group)")
    algorithm: Literal["rtn", "gptq"] = Field("gptq", description="rtn: round to nearest; gptq: GPTQ error "
                                                                  "compensation from calibration inputs")
    calib_samples: int = Field(128, ge=MIN_CALIB_SAMPLES, le=100_000,
                               description="unlabeled training inputs (GPTQ Hessians, sensitivity, output check)")
    damp: float = Field(0.01, gt=0.0, le=1.0, description="GPTQ dampening, relative to the mean diagonal of H")
    act_order: bool = Field(False, description="GPTQ: quantize columns by decreasing Hessian diagonal")
    exclude: list[str] = Field([], max_length=10_000,
                               description="module names (with everything inside) whose weights stay float")

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if 0 < v < MIN_GROUP:
            raise ValueError(f"group_size {v} is too small: use 0 (one scale per output channel) or at least "
                             f"{MIN_GROUP} (a float32 scale per {v} weights costs more than it saves)")
        return v


class WeightQuantConfig(WeightQuantBase):
    """Settings of ``quant.weight``."""

    bits: int = Field(4, ge=MIN_BITS, le=MAX_BITS,
                      description="weight bit width; 2-4 are stored as packed INT4, 5-8 as INT8")


@dataclass
class Prepared:
    """A BatchNorm-folded copy of the model, its calibration inputs, the layers to quantize (forward order)
    and the weighted layers that stay float (with the reason)."""

    model: nn.Module
    x: torch.Tensor
    layers: list[str]
    floating: dict[str, str]


def prepare(model: nn.Module, config: WeightQuantBase, ctx: StageContext, stage: str) -> Prepared:
    if ctx.export.format != "onnx":
        raise EdgeCompressError(
            f"{stage} writes an ONNX artifact (packed INT4/INT8 weights with DequantizeLinear), not "
            f"{ctx.export.format!r}", where="export.format", fix="use export: {format: onnx}")
    x = calibration_samples(ctx, config.calib_samples, stage)
    folded = copy.deepcopy(model).eval()  # BatchNorm folded, so the quantized weights are the ones the file ships
    fold_batchnorms(folded, build_graph(folded, x[:2]), remove=True)
    layers, floating = select_layers(folded, x, config.exclude, stage)
    return Prepared(folded, x, layers, floating)


def quantize_and_export(prep: Prepared, specs: dict[str, QuantSpec], config: WeightQuantBase, ctx: StageContext,
                        precision: str) -> tuple[Artifact, dict]:
    """Quantize ``prep.model`` in place with ``specs``, write the packed ONNX artifact and check it in ONNX
    Runtime against the PyTorch model with the dequantized weights. Returns the artifact and its report."""
    quantized, table = quantize_layers(prep.model, specs, prep.x, config.algorithm, config.damp, config.act_order)
    path = ctx.scratch_dir() / f"model_{precision.replace('fp32-', '').replace('/', '_')}.onnx"
    artifact, fp32, names = write_weight_only_onnx(prep.model, quantized, prep.x[:1], path, ctx.export.opset)
    artifact.precision = precision
    check = prep.x[:64]
    with torch.no_grad():
        expected = prep.model(check).numpy()
    diff = float(np.abs(artifact.runner()(check.numpy()) - expected).max())
    report = {
        "algorithm": GPTQ_NOTE if config.algorithm == "gptq" else "round to nearest",
        "layers": table, "float_layers": prep.floating,
        "weight_bytes_fp32": sum(r["fp32_bytes"] for r in table.values()),
        "weight_bytes_predicted": sum(r["bytes"] for r in table.values()),
        "weight_bytes": weight_bytes(path, list(names.values())),
        "file_bytes": artifact.size_bytes, "fp32_file_bytes": fp32.size_bytes,
        "onnx_max_abs_diff": diff, "opset": 21, "calibration_samples": len(prep.x),
    }
    return artifact, report


@register(STAGE, WeightQuantConfig, produces_artifact=True)
def weight_quant(model: nn.Module, config: WeightQuantConfig, ctx: StageContext) -> StageOutput:
    """Weight-only low-bit quantization (2-8 bits, per channel or group-wise, RTN or GPTQ), stored packed in ONNX.

    Every Conv/Linear weight (BatchNorm folded in) becomes packed INT4 (2-4 bits) or INT8 (5-8 bits) codes with
    float32 scales, dequantized by ``DequantizeLinear`` (opset 21) in the ONNX file; activations stay float.
    ``algorithm: gptq`` (default) compensates rounding errors from ``calib_samples`` unlabeled inputs. The float
    model is returned unchanged beside the artifact; ``ctx.info`` lists per-layer bits/group/bytes and the
    layers kept float.
    """
    prep = prepare(model, config, ctx, STAGE)
    specs = {name: QuantSpec(config.bits, config.group_size, config.symmetric) for name in prep.layers}
    artifact, report = quantize_and_export(prep, specs, config, ctx, f"fp32-w{config.bits}")
    ctx.info.update(bits=config.bits, group_size=config.group_size, symmetric=config.symmetric, **report)
    return StageOutput(model, artifact)
