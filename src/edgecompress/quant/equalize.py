"""Cross-layer equalization and empirical bias correction before INT8 post-training quantization.

After Nagel et al. 2019, "Data-Free Quantization through Weight Equalization and Bias Correction" (DFQ).
``quant.ptq`` runs these on a copy of the float model before export (``equalize``, ``bias_correction``):

* **BatchNorm folding** is :func:`edgecompress.nn.bn.fold_batchnorms` (torch-pruning's dependency graph finds
  each BN fed by a conv or linear layer); a folded BN stays in place as an exact identity.
* **Pairs** come from a ``torch.fx`` trace, not from module names: layer A (conv or linear) whose output
  reaches layer B only through ops that commute with a positive per-channel scale (ReLU, identity BN,
  dropout, max/avg pooling, a flatten of a 1x1 map), each output used once, where B consumes A's channels one
  to one (a dense conv or linear, or a depthwise conv, which then pairs again with the layer after it).
  ReLU6 does not commute with scaling; DFQ replaces it by ReLU, which is not done here: such chains are
  reported and left alone.
* **CLE**: ``s_i = sqrt(r1_i * r2_i) / r2_i`` (``r1_i`` the range of A's output channel i, ``r2_i`` of B's input
  channel i), A's channel divided and B's input multiplied by ``s_i``; sweeps over all pairs repeat until no
  scale moves by more than 1e-4 (a depthwise conv sits in two pairs). DFQ's bias absorption is not done.
* **Bias correction** (DFQ's empirical variant, our two-pass form): each quantized layer's weight is
  quantized exactly as the target quantizer will (``onnxruntime_weight_quantizer`` /
  ``observer_weight_quantizer``), and the mean of ``layer(x; W_q - W)`` over calibration inputs, per output
  channel, is subtracted from the bias. That mean is ``(W_q - W)·E[x]`` computed through the layer itself,
  so zero padding at the borders is accounted for. ``x`` comes first from the float model, then (second
  pass) from the model with every layer's quantized weight and first-pass corrected bias, activations float:
  a fixed-point stand-in for DFQ's layer-by-layer sequence at 2 forward passes instead of one per layer.
  Only biases change; the float weights are restored.

Hand-written because no maintained library does this for plain PyTorch modules feeding ONNX Runtime or
PT2E (AIMET, which has it, does not install beside torch 2.13 CPU).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from edgecompress.errors import EdgeCompressError
from edgecompress.nn.bn import fold_batchnorms, is_identity_bn
from edgecompress.nn.capture import forward_order, forward_with_hooks
from edgecompress.nn.layers import build_graph, is_depthwise

WeightQuantizer = Callable[[torch.Tensor], torch.Tensor]  # float weight -> dequantized (fake-quantized) weight

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_PASS_MODULES = (nn.ReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                 nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
                   F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.dropout}
_RELU6 = (nn.ReLU6, nn.Hardtanh)
MAX_SWEEPS = 50
TOLERANCE = 1e-4


def _dense(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or isinstance(m, _LAYERS) and m.groups == 1


def _passes_scale(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` commutes with a positive per-channel scale and keeps the channel axis."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.Flatten):
            return _flattens_1x1(node)
        return isinstance(m, _PASS_MODULES) or is_identity_bn(m)
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS or node.target is torch.flatten and _flattens_1x1(node)
    return node.op == "call_method" and node.target == "relu"


def _flattens_1x1(node: fx.Node) -> bool:
    meta = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
    return meta is not None and int(np.prod(meta.shape[2:])) == 1


def _is_relu6(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _RELU6)
    return node.target in (F.relu6, F.hardtanh)


def find_pairs(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], list[str]]:
    """Equalizable (A, B) layer-name pairs in forward order, and the A layers cut off from B by a ReLU6."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, ... on data-dependent control flow
        raise EdgeCompressError(
            f"cross-layer equalization needs a torch.fx trace of the model, which failed: {err}",
            where="quant.ptq.equalize", fix="set equalize: false, or make forward() traceable by torch.fx",
        ) from err
    ShapeProp(gm).propagate(example)
    modules = dict(gm.named_modules())
    pairs, relu6 = [], []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _LAYERS):
            continue
        first, cur = modules[node.target], node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            second = modules.get(nxt.target) if nxt.op == "call_module" else None
            if isinstance(second, _LAYERS):
                fan_in = second.in_features if isinstance(second, nn.Linear) else second.in_channels
                if (_dense(second) or is_depthwise(second)) and fan_in == _out_channels(first):
                    pairs.append((node.target, nxt.target))
                break
            if _is_relu6(nxt, modules):
                relu6.append(node.target)
            if not _passes_scale(nxt, modules):
                break
            cur = nxt
    return pairs, relu6


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _out_ranges(m: nn.Module) -> torch.Tensor:
    return m.weight.detach().abs().flatten(1).amax(1)


def _in_ranges(m: nn.Module) -> torch.Tensor:
    w = m.weight.detach().abs()
    return w.flatten(1).amax(1) if is_depthwise(m) else w.transpose(0, 1).flatten(1).amax(1)


@torch.no_grad()
def _rescale(first: nn.Module, second: nn.Module, s: torch.Tensor) -> None:
    """Divide ``first``'s output channel i by s_i and multiply ``second``'s input channel i by s_i."""
    shape = [-1] + [1] * (first.weight.dim() - 1)
    first.weight.div_(s.view(shape))
    if first.bias is not None:
        first.bias.div_(s)
    if is_depthwise(second):
        second.weight.mul_(s.view([-1] + [1] * (second.weight.dim() - 1)))
    else:
        second.weight.mul_(s.view([1, -1] + [1] * (second.weight.dim() - 2)))


def range_utilisation(m: nn.Module) -> float:
    """Mean over output channels of channel range / tensor range: the share of the int8 grid a channel uses
    under per-tensor quantization (1 = all channels span the whole range)."""
    r = _out_ranges(m)
    return float((r / r.max().clamp_min(1e-12)).mean())


def equalize(model: nn.Module, pairs: list[tuple[str, str]]) -> dict:
    """Cross-layer equalization of ``pairs`` in place (BatchNorms already folded); returns the report."""
    layers = {n: model.get_submodule(n) for pair in pairs for n in pair}
    before = {n: range_utilisation(layers[a]) for a, _ in pairs for n in (a,)}
    sweeps = 0
    for sweeps in range(1, MAX_SWEEPS + 1):
        moved = 0.0
        for a, b in pairs:
            r1, r2 = _out_ranges(layers[a]), _in_ranges(layers[b])
            ok = (r1 > 0) & (r2 > 0)
            s = torch.where(ok, torch.sqrt(r1 * r2) / r2.where(ok, torch.ones_like(r2)), torch.ones_like(r1))
            _rescale(layers[a], layers[b], s)
            moved = max(moved, float((s.log().abs()).max()))
        if moved < TOLERANCE:
            break
    after = {n: range_utilisation(layers[n]) for n in before}
    return {
        "pairs_equalized": len(pairs), "cle_sweeps": sweeps,
        "range_utilisation_before": round(float(np.mean(list(before.values()))), 4) if before else None,
        "range_utilisation_after": round(float(np.mean(list(after.values()))), 4) if after else None,
        "range_utilisation_worst_before": round(min(before.values()), 4) if before else None,
        "range_utilisation_worst_after": round(min(after.values()), 4) if after else None,
    }


def _weight_error_means(model: nn.Module, layers: dict[str, nn.Module], deltas: dict[str, torch.Tensor],
                        calib: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    """Per layer, the mean over calibration inputs and positions of ``layer(x; W=delta, no bias)`` per output
    channel, all layers in one pass over ``calib``."""
    totals = {n: torch.zeros(d.shape[0], dtype=torch.float64) for n, d in deltas.items()}
    counts = dict.fromkeys(deltas, 0)

    def hook(_module, args, name):
        layer, x = layers[name], args[0]
        y = F.linear(x, deltas[name]) if isinstance(layer, nn.Linear) else layer._conv_forward(x, deltas[name], None)
        y = y.transpose(0, 1).flatten(1).double() if y.dim() > 2 else y.t().double()
        totals[name] += y.sum(1)
        counts[name] += y.shape[1]

    for chunk in calib.split(batch):
        forward_with_hooks(model, chunk, [m.register_forward_pre_hook(lambda mod, args, n=n: hook(mod, args, n))
                                          for n, m in layers.items()])
    return {n: (totals[n] / max(counts[n], 1)).float() for n in deltas}


@torch.no_grad()
def correct_bias(model: nn.Module, layers: list[str], quantize: WeightQuantizer, calib: torch.Tensor,
                 passes: int = 2, batch: int = 128) -> dict:
    """Empirical bias correction of ``layers`` in place; returns the report.

    Pass 1 takes the input means from the float model; each further pass from the model with every layer's
    quantized weight and the previous pass's corrected bias (our fixed-point stand-in for DFQ's layer-by-layer
    sequence, which would need one pass per layer). Float weights are restored at the end.
    """
    mods = {n: model.get_submodule(n) for n in layers}
    floats = {n: m.weight.detach().clone() for n, m in mods.items()}
    deltas = {n: quantize(w) - w for n, w in floats.items()}
    biases = {n: m.bias.detach().clone() if m.bias is not None else torch.zeros(len(floats[n]))
              for n, m in mods.items()}
    try:
        for i in range(passes):
            means = _weight_error_means(model, mods, deltas, calib, batch)
            for n, m in mods.items():
                m.bias = nn.Parameter(biases[n] - means[n])
                if i == 0:
                    m.weight.add_(deltas[n])  # later passes see every layer as it will be deployed
    finally:
        for n, m in mods.items():
            m.weight.copy_(floats[n])
    return {"bias_corrected_layers": len(mods), "bias_correction_passes": passes,
            "bias_shift_max_abs": {n: round(float((m.bias - biases[n]).abs().max()), 6) for n, m in mods.items()}}


def prepare(model: nn.Module, calib: torch.Tensor, *, equalize_pairs: bool, quantize: WeightQuantizer | None,
            skip: Callable[[str], bool]) -> dict:
    """The ``quant.ptq`` pre-pass, in place: fold BatchNorms, then CLE and/or bias correction of every layer
    ``skip`` does not exclude. Returns the report for ``ctx.info``."""
    model.eval()
    folded, _ = fold_batchnorms(model, build_graph(model, calib[:2]))
    report: dict = {"batchnorms_folded": len(folded)}
    if equalize_pairs:
        pairs, relu6 = find_pairs(model, calib[:2])
        report.update(equalize(model, pairs), cle_pairs=[f"{a} -> {b}" for a, b in pairs],
                      cle_blocked_by_relu6=relu6)
    if quantize is not None:
        layers = [n for n in forward_order(model, calib)[0]
                  if isinstance(model.get_submodule(n), _LAYERS) and not skip(n)]
        report.update(correct_bias(model, layers, quantize, calib))
    return report


def onnxruntime_weight_quantizer(per_channel: bool, reduce_range: bool) -> WeightQuantizer:
    """Symmetric int8 weights exactly as ``onnxruntime.quantization.quantize_static`` computes them (QDQ): its own
    ``quantize_data`` per output channel (axis 0 of conv and Gemm weights) or per tensor."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    def quantize(w: torch.Tensor) -> torch.Tensor:
        rows = w.reshape(len(w) if per_channel else 1, -1).numpy().astype(np.float32)
        out = []
        for row in rows:
            zero_point, scale, q = quantize_data(row, TensorProto.INT8, True, reduce_range=reduce_range)
            out.append((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale))
        return torch.from_numpy(np.stack(out)).reshape(w.shape)

    return quantize


def onnxruntime_weight_scales(per_channel: bool, reduce_range: bool):
    """``w -> (scales per row, qmin, qmax)`` of ``quantize_static``'s symmetric int8 weights (rows: output
    channels, or one row per tensor), for :func:`edgecompress.quant.adaround.adaround`."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType, quantize_data

    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT8, reduce_range=reduce_range, symmetric=True)

    def scales(w: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        rows = w.detach().reshape(len(w) if per_channel else 1, -1).numpy().astype(np.float32)
        found = [quantize_data(row, TensorProto.INT8, True, reduce_range=reduce_range)[1] for row in rows]
        return torch.tensor(np.array(found, dtype=np.float32)), int(qmin), int(qmax)

    return scales


def observer_weight_quantizer(spec) -> WeightQuantizer:
    """Weights fake-quantized by the observer that ``prepare_pt2e`` builds from a PT2E ``QuantizationSpec``
    (torchao's own constructor), i.e. the int8 values ``convert_pt2e`` stores."""
    from torchao.quantization.pt2e.prepare import _create_obs_or_fq_from_qspec

    def quantize(w: torch.Tensor) -> torch.Tensor:
        observer = _create_obs_or_fq_from_qspec(spec, {}, False)
        observer(w)
        scale, zero_point = observer.calculate_qparams()
        if spec.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine):
            return torch.fake_quantize_per_channel_affine(w, scale.float(), zero_point.int(), spec.ch_axis or 0,
                                                          spec.quant_min, spec.quant_max)
        return torch.fake_quantize_per_tensor_affine(w, float(scale), int(zero_point), spec.quant_min, spec.quant_max)

    return quantize
