"""GPTQ weight-only quantization of every transformer projection, layer by layer on calibration text (the
layer-wise driver of :mod:`edgecompress.llm.layerwise`, the GPTQ solver of ``quant.weight``).

The projections keep float weights equal to their dequantized codes (``(q - zero) * scale``), so the model
runs in PyTorch or ONNX Runtime as before and its perplexity is that of the quantized model; ``nbytes`` is what
the packed codes, scales and zero points take. Zeros left by a pruning stage are not kept: GPTQ may round a
pruned weight's neighbours' errors into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgecompress.llm.arch import INPUT_GROUPS, transformer
from edgecompress.llm.layerwise import capture_calls, collect_stats, run_layers
from edgecompress.placement import torch_threads
from edgecompress.quant.weights.gptq import gptq
from edgecompress.quant.weights.quantizer import QuantSpec


@dataclass
class LLMQuantResult:
    nbytes: int  # the projections' packed weights
    float_bytes: int  # the same weights in float32


def gptq_llm(model: nn.Module, batches: list[dict[str, torch.Tensor]], spec: QuantSpec,
             device: torch.device | str = "cpu", damp: float = 0.01) -> LLMQuantResult:
    """Quantize every projection of ``model`` in place (see the module docstring)."""
    arch, device = transformer(model), torch.device(device)
    calls = capture_calls(arch, batches, device)
    sizes = [0, 0]

    def visit(i, layer, calls):
        stats = collect_stats(arch, i, layer, calls, hessian=True)
        for role, proj in arch.projections(i).items():
            with torch_threads(1):  # as SparseGPT's column loop (edgecompress.llm.criteria)
                q, _ = gptq(proj.weight.data.cpu(), stats[INPUT_GROUPS[role]].matrix(), spec, damp)
            proj.weight.data.copy_(q.dequantize().to(proj.weight))
            sizes[0] += spec.nbytes(*proj.weight.shape)
            sizes[1] += proj.weight.numel() * 4

    run_layers(arch, calls, visit, device)
    return LLMQuantResult(*sizes)
