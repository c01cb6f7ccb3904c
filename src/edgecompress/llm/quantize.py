"""Weight-only quantization of every transformer projection (GPTQ or round to nearest), layer by layer on
calibration text (the layer-wise driver of :mod:`edgecompress.llm.layerwise`, the GPTQ solver of
``quant.weight``).

The projections keep float weights equal to their dequantized codes (``(q - zero) * scale``), so the model
runs in PyTorch or ONNX Runtime as before and its perplexity is that of the quantized model; ``nbytes`` is what
the packed codes, scales and zero points take. Zeros left by a pruning stage stay zero (they get the code of
zero, and GPTQ spreads the error of that onto the weights not yet quantized), so a pruned model stays pruned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from edgecompress.llm.arch import INPUT_GROUPS, transformer
from edgecompress.llm.layerwise import capture_calls, collect_stats, run_layers
from edgecompress.placement import torch_threads
from edgecompress.quant.weights.gptq import gptq
from edgecompress.quant.weights.quantizer import QuantSpec, rtn


@dataclass
class LLMQuantResult:
    nbytes: int  # the quantized projections' packed weights
    float_bytes: int  # the same weights in float32
    floating: list[str] = field(default_factory=list)  # projections left float (excluded)


def gptq_llm(model: nn.Module, batches: list[dict[str, torch.Tensor]], spec: QuantSpec,
             device: torch.device | str = "cpu", damp: float = 0.01, algorithm: str = "gptq",
             act_order: bool = False, exclude: Sequence[str] = ()) -> LLMQuantResult:
    """Quantize every projection of ``model`` in place (see the module docstring) except those whose full name
    starts with one of ``exclude``; ``algorithm``: ``gptq`` or ``rtn`` (round to nearest, no calibration)."""
    arch, device = transformer(model), torch.device(device)
    calls = capture_calls(arch, batches if algorithm == "gptq" else [], device)
    result = LLMQuantResult(0, 0)

    def visit(i, layer, calls):
        stats = collect_stats(arch, i, layer, calls, hessian=True) if algorithm == "gptq" else {}
        for role, proj in arch.projections(i).items():
            if arch.name(i, role).startswith(tuple(exclude)):
                result.floating.append(arch.name(i, role))
                continue
            w = proj.weight.data.cpu()
            with torch_threads(1):  # as SparseGPT's column loop (edgecompress.llm.criteria)
                q = gptq(w, stats[INPUT_GROUPS[role]].matrix(), spec, damp, act_order, keep_zeros=True)[0] \
                    if stats else rtn(w, spec)
            proj.weight.data.copy_(q.dequantize().to(proj.weight))
            result.nbytes += spec.nbytes(*proj.weight.shape)
            result.float_bytes += proj.weight.numel() * 4

    run_layers(arch, calls, visit, device)
    return result
