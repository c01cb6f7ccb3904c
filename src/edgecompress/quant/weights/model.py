"""Weight-only quantization of a whole model: which layers are quantized (and why the others stay float), and
the layer-by-layer pass (round-to-nearest, or GPTQ in forward order through :mod:`edgecompress.nn.sequential`,
so that each layer's Hessian comes from the outputs of the already-quantized layers before it, as in the GPTQ
paper)."""

from __future__ import annotations

import torch
from torch import nn

from edgecompress import distributed
from edgecompress.errors import EdgeCompressError
from edgecompress.nn import im2col
from edgecompress.nn.capture import forward_order
from edgecompress.nn.sequential import LayerBatch, run_sequential
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


def _gptq_layer(layer: nn.Module, hessian: Hessian, spec: QuantSpec, damp: float, act_order: bool
                ) -> tuple[QuantizedWeight, float]:
    """GPTQ one layer against its accumulated Hessian (one per conv group)."""
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
    round-to-nearest (said in the returned per-layer table), quantized first: no GPTQ layer's inputs depend on
    a layer after it."""
    quantized, table, hessians = {}, {}, {}

    def store(name: str, qw: QuantizedWeight, **notes) -> None:
        layer = model.get_submodule(name)
        with torch.no_grad():
            layer.weight.copy_(qw.dequantize().reshape(layer.weight.shape))
        quantized[name] = qw
        rows, k = qw.codes.shape
        bits = specs[name].bits
        table[name] = {"bits": bits, "container": f"int{container_bits(bits)}", "algorithm": algorithm, **notes,
                       "group": qw.group, "params": rows * k, "fp32_bytes": 4 * rows * k, "bytes": qw.nbytes}

    def observe(name: str, batch: LayerBatch) -> None:
        if name not in hessians:
            hessians[name] = Hessian(model.get_submodule(name))
        hessians[name].add(batch.input)

    def apply(name: str) -> None:
        qw, used = _gptq_layer(model.get_submodule(name), hessians.pop(name).reduce(), specs[name], damp, act_order)
        store(name, qw, **({"damp": used} if used != damp else {}))

    gptq_layers = []
    for name, spec in specs.items():
        why_not = im2col.unsupported(model.get_submodule(name)) if algorithm == "gptq" else None
        if algorithm == "gptq" and why_not is None:
            gptq_layers.append(name)
        else:
            store(name, rtn(model.get_submodule(name).weight.detach().flatten(1), spec),
                  **({"algorithm": f"rtn ({why_not})"} if why_not else {}))
    if gptq_layers:
        x = distributed.shard_batches(x, BATCH)  # under torchrun each rank observes its own batches
        run_sequential(model, x, gptq_layers, observe=observe, apply=apply, batch_size=BATCH)
    return {n: quantized[n] for n in specs}, {n: table[n] for n in specs}
