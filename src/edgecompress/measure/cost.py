"""What compression itself costs: wall and CPU time, and the FLOPs of the PyTorch passes a stage runs.

``CostMeter`` is a context manager. While it is active, a global module forward hook adds up the FLOPs of every
convolution and linear layer call (2 per multiply-accumulate, from the layer's output size and fan-in), in any
model: the stage's, the teacher's, copies it makes. When a gradient later flows back through such a call
(training, Taylor, SNIP/GraSP, data-free synthesis; a tensor hook on its output sees it), the call adds an
estimated backward pass of 2x its forward FLOPs (gradients with respect to inputs and weights); a pass that
builds a graph nobody differentiates (graph tracing) adds none. What it does not see is named in ``COUNTED``: other layer types (norms,
activations, pooling: a few percent of a CNN's FLOPs), linear algebra outside modules (least-squares solves,
GPTQ's Hessian: stages add those themselves through ``StageContext.add_solve_flops``), and ONNX Runtime or
ExecuTorch runs (e.g. ONNX Runtime's calibration passes inside ``quant.ptq``). torch's FlopCounterMode would
count every op, but it slows training several-fold, so the accounting is a hook of our own.
"""

from __future__ import annotations

import time

import torch
from torch import nn

COUNTED = ("Conv/Linear FLOPs of PyTorch forward passes (2 per MAC) + 2x forward for each backward through them; "
           "solves as reported by the stage; ONNX Runtime/ExecuTorch passes not counted")


def layer_flops(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """FLOPs of one call of a convolution or linear layer (0 for other modules). A convolution's weight is
    ``[out, in/groups, *kernel]`` (transposed: ``[in, out/groups, *kernel]``): each output (transposed: input)
    element takes ``weight.shape[1] * kernel`` multiply-accumulates."""
    if isinstance(module, nn.modules.conv._ConvNd):
        per_element = module.weight[0].numel()
        elements = inputs[0].numel() if module.transposed else output.numel()
        return 2 * elements * per_element
    if isinstance(module, nn.Linear):
        return 2 * output.numel() * module.in_features
    return 0


class CostMeter:
    """Wall seconds, CPU seconds (all threads of this process) and layer FLOPs spent inside a ``with`` block."""

    def __init__(self) -> None:
        self.forward = self.backward = 0
        self.wall = self.cpu = 0.0

    def _hook(self, module: nn.Module, inputs: tuple, output: object) -> None:
        if not torch.is_tensor(output):
            return
        flops = layer_flops(module, inputs, output)
        self.forward += flops
        if flops and output.requires_grad:
            output.register_hook(lambda grad: self._backward(2 * flops))

    def _backward(self, flops: int) -> None:
        self.backward += flops

    def __enter__(self) -> CostMeter:
        self._handle = nn.modules.module.register_module_forward_hook(self._hook)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu
        self._handle.remove()
