"""The weight-only ONNX artifact: the float model (BatchNorm folded, weights already dequantized) exported as
usual, converted to opset 21 (IR version 10, which ONNX Runtime 1.31 accepts), and each quantized weight
initializer replaced by ``DequantizeLinear`` over a packed INT4/INT8 initializer.

Codes are stored as the row-major 2-D view ``[out, in * kh * kw]``; per-row scales use the per-axis form
(``axis`` 0, scale ``[rows]``), group scales the blocked form of opset 21 (``axis`` 1, ``block_size`` = group,
scale ``[rows, ceil(K / group)]``). A Conv weight is reshaped back to 4-D after dequantization and a MatMul's
``[K, rows]`` weight transposed. The Transpose is deliberate: ONNX Runtime fuses ``DequantizeLinear -> MatMul``
into ``MatMulNBits``, whose default ``accuracy_level`` 4 computes with int8-quantized activations (measured
1e-3 output error), which would no longer be weight-only quantization; and such a weight always uses the
blocked form (one block of K when per row), because ONNX Runtime moves a Transpose through a per-axis
``DequantizeLinear`` (and then fuses) but not through a blocked one. The last node writes a tensor with the
removed initializer's name, so the Conv/Gemm/MatMul nodes that read it are left untouched.
Each quantized layer is found by value: its initializer must equal the PyTorch layer's dequantized weight
(row-major, or transposed for a MatMul / a Gemm without ``transB``), which also checks the mapping.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper, version_converter
from torch import nn

from edgecompress.export.artifact import Artifact
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.quant.weights.quantizer import QuantizedWeight, container_bits

OPSET = 21  # INT4 and blocked DequantizeLinear
IR_VERSION = 10  # what ONNX Runtime 1.31 loads (onnx 1.23 writes 11+ by default)
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def _int_tensor(values: np.ndarray, bits: int, name: str) -> onnx.TensorProto:
    """An INT4 (packed two per byte) or INT8 initializer."""
    dtype = ml_dtypes.int4 if container_bits(bits) == 4 else np.int8
    return numpy_helper.from_array(values.astype(dtype), name)


def _dequantize_nodes(name: str, qw: QuantizedWeight, shape: tuple[int, ...], transposed: bool
                      ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers that compute the float tensor ``name`` of ``shape`` from ``qw``: a
    ``DequantizeLinear`` of the row-major ``[rows, K]`` codes, then a ``Reshape`` (Conv) or ``Transpose``
    (MatMul, Gemm without ``transB``) when the consumer wants another layout."""
    scale, zero = qw.scale.numpy(), None if qw.zero is None else qw.zero.numpy()
    blocked = scale.shape[1] > 1 or transposed  # ORT pushes a Transpose through a per-axis DQ only
    if not blocked:  # per-axis form: one scale per row
        scale, zero = scale[:, 0], None if zero is None else zero[:, 0]
    inits = [_int_tensor(qw.codes.numpy(), qw.spec.bits, f"{name}_q"), numpy_helper.from_array(scale, f"{name}_scale")]
    inputs = [f"{name}_q", f"{name}_scale"]
    if zero is not None:
        inits.append(_int_tensor(zero, qw.spec.bits, f"{name}_zero"))
        inputs.append(f"{name}_zero")
    attrs = {"axis": 1, "block_size": qw.group} if blocked else {"axis": 0}
    direct = not transposed and len(shape) == 2
    dq = helper.make_node("DequantizeLinear", inputs, [name if direct else f"{name}_2d"], name=f"{name}_dq", **attrs)
    if direct:
        return [dq], inits
    if transposed:
        return [dq, helper.make_node("Transpose", [f"{name}_2d"], [name], name=f"{name}_t", perm=[1, 0])], inits
    inits.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), f"{name}_shape"))
    return [dq, helper.make_node("Reshape", [f"{name}_2d", f"{name}_shape"], [name], name=f"{name}_reshape")], inits


def _match(array: np.ndarray, weights: dict[str, np.ndarray]) -> tuple[str, bool] | None:
    """The layer whose 2-D weight equals ``array`` (row-major view) or its transpose: (name, transposed)."""
    for layer, w in weights.items():
        if array.size != w.size:
            continue
        if np.array_equal(array.reshape(w.shape), w):
            return layer, False
        if array.ndim == 2 and np.array_equal(array.T, w):
            return layer, True
    return None


def write_weight_only_onnx(model: nn.Module, quantized: dict[str, QuantizedWeight], example: torch.Tensor,
                           path: Path, opset: int) -> tuple[Artifact, Artifact, dict[str, str]]:
    """Write ``model`` (weights already dequantized) with ``quantized`` weights stored packed, atomically.

    Returns the weight-only artifact (precision set by the caller), the FP32 export it came from, and for
    each layer the ONNX initializer that holds it. Raises if a layer's weight is not found in the export."""
    fp32 = export_onnx(model, example, path.with_name("model_fp32.onnx"), opset)
    proto = version_converter.convert_version(onnx.load(str(fp32.path)), OPSET)
    proto.ir_version = IR_VERSION
    graph = proto.graph
    del graph.value_info[:]  # shapes the converter inferred: ~1 KB the FP32 export does not carry
    weights = {n: model.get_submodule(n).weight.detach().flatten(1).numpy() for n in quantized}
    inits = {i.name: i for i in graph.initializer}
    found: dict[str, str] = {}
    nodes, new_inits = [], []
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        name = node.input[1]
        if name in found.values():
            continue
        array = numpy_helper.to_array(inits[name])
        hit = _match(array, {k: v for k, v in weights.items() if k not in found})
        if hit is None:
            continue
        layer, transposed = hit
        found[layer] = name
        more_nodes, more_inits = _dequantize_nodes(name, quantized[layer], array.shape, transposed)
        nodes += more_nodes
        new_inits += more_inits
    missing = sorted(set(quantized) - set(found))
    if missing:
        raise RuntimeError(f"quantized layer(s) {missing} have no matching weight initializer in the ONNX export")
    keep = [i for i in graph.initializer if i.name not in found.values()]
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)  # the new nodes read initializers only: first is a valid topological order
    onnx.checker.check_model(proto, full_check=True)
    tmp = path.with_suffix(".tmp.onnx")
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return Artifact(path, "onnx", "onnxruntime"), fp32, found


def weight_bytes(path: Path, names: list[str]) -> int:
    """Bytes of the stored (packed) codes, scales and zero points of the weight initializers ``names``."""
    stored = {f"{n}_{part}" for n in names for part in ("q", "scale", "zero")}
    return sum(len(i.raw_data) for i in onnx.load(str(path)).graph.initializer if i.name in stored)
