"""Weight-only quantization of a whole model: which layers are quantized (and why the others stay float), and
the layer-by-layer pass (round-to-nearest, or GPTQ in forward order so that each layer's Hessian comes from the
outputs of the already-quantized layers before it, as in the GPTQ paper)."""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.nn import im2col
from edgecompress.nn.capture import capture, forward_order
from edgecompress.quant.ptq import check_module_names, in_module
from edgecompress.quant.weights.gptq import Hessian, gptq
from edgecompress.quant.weights.quantizer import QuantizedWeight, QuantSpec, container_bits, rtn

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
BATCH = 64


def select_layers(model: nn.Module, x: torch.Tensor, exclude: list[str], stage: str
                  ) -> tuple[list[str], dict[str, str]]:
    """The Conv/Linear layers to quantize, in forward order, and the weighted layers kept float with the reason."""
    check_module_names(model, exclude, stage)
    order, shared = forward_order(model, x)
    chosen, floating = [], {}
    for name in order:
        layer = model.get_submodule(name)
        if any(in_module(name, e) for e in exclude):
            floating[name] = "excluded by the config"
        elif not isinstance(layer, QUANTIZABLE):
            floating[name] = f"{type(layer).__name__} is not supported (Conv1d, Conv2d and Linear are)"
        elif name in shared:
            floating[name] = "called more than once per forward pass (shared weights)"
        else:
            chosen.append(name)
    if not chosen:
        raise EdgeCompressError("no layer is left to quantize", where=f"{stage}.exclude",
                                fix=f"keep at least one Conv/Linear layer; kept float: {floating}")
    return chosen, floating


def _gptq_layer(model: nn.Module, name: str, spec: QuantSpec, x: torch.Tensor, damp: float, act_order: bool
                ) -> tuple[QuantizedWeight, float]:
    """GPTQ one layer, its Hessian from the inputs it receives in ``model`` as it is now (one per conv group)."""
    layer = model.get_submodule(name)
    hessian = Hessian(layer)
    for xb in x.split(BATCH):
        hessian.add(capture(model, name, xb, "input"))
    w = layer.weight.detach().flatten(1)
    rows = w.shape[0] // hessian.groups
    parts = [gptq(w[g * rows:(g + 1) * rows], hessian.matrix(g), spec, damp, act_order) for g in range(hessian.groups)]
    q = [p[0] for p in parts]
    zero = None if spec.symmetric else torch.cat([p.zero for p in q])
    return QuantizedWeight(torch.cat([p.codes for p in q]), torch.cat([p.scale for p in q]), zero, spec), \
        max(p[1] for p in parts)


def quantize_layers(model: nn.Module, specs: dict[str, QuantSpec], x: torch.Tensor | None, algorithm: str,
                    damp: float = 0.01, act_order: bool = False) -> tuple[dict[str, QuantizedWeight], dict]:
    """Quantize the layers of ``specs`` (names in forward order) in place: each weight becomes its dequantized
    value. ``algorithm`` ``gptq`` needs calibration inputs ``x``; layers GPTQ cannot view as im2col fall back to
    round-to-nearest (said in the returned per-layer table)."""
    quantized, table = {}, {}
    for name, spec in specs.items():
        layer = model.get_submodule(name)
        why_not = im2col.unsupported(layer) if algorithm == "gptq" else None
        row = {"bits": spec.bits, "container": f"int{container_bits(spec.bits)}", "algorithm": algorithm}
        if algorithm == "gptq" and why_not is None:
            qw, used = _gptq_layer(model, name, spec, x, damp, act_order)
            if used != damp:
                row["damp"] = used
        else:
            qw = rtn(layer.weight.detach().flatten(1), spec)
            if why_not:
                row["algorithm"] = f"rtn ({why_not})"
        with torch.no_grad():
            layer.weight.copy_(qw.dequantize().reshape(layer.weight.shape))
        quantized[name] = qw
        rows, k = qw.codes.shape
        table[name] = {**row, "group": qw.group, "params": rows * k, "fp32_bytes": 4 * rows * k, "bytes": qw.nbytes}
    return quantized, table
