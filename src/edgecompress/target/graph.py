"""What an ONNX graph needs from a target: each compute node's operator, precision, weight bytes, output bytes
and the activation bytes live while it runs (so the peak is the SRAM a static memory planner would need).

Hand-written because no library estimates a deployed model's memory from an ONNX graph: buffers are planned the
way microcontroller runtimes (TFLite Micro, CMSIS-NN) do — each activation lives from the node that writes it to
its last reader, nothing is computed in place. Nodes that only relabel a buffer (QuantizeLinear, DequantizeLinear,
Identity, Reshape, Flatten, Squeeze, Unsqueeze) share their input's buffer, as do elementwise activations (Relu,
Clip, HardSwish, ...) whose input has no other reader (runtimes fuse them into the layer before), and a buffer is stored in the narrowest
type it is seen in: a float Conv output that is quantized right away is written as int8 by an integer runtime.
The batch dimension counts as 1.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, shape_inference

from edgecompress.quant.ptq import _onnx_module_path, qdq_split

ALIAS_OPS = ("QuantizeLinear", "DequantizeLinear", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
IN_PLACE_OPS = ("Relu", "Clip", "LeakyRelu", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh")  # fused into the producer


@dataclass
class NodeMemory:
    """One compute node: operator, the module it came from, precision and bytes."""

    name: str
    op: str
    module: str
    precision: str  # float32, int8, uint8, ...
    weight_bytes: int
    output_bytes: int
    live_bytes: int = 0  # activation bytes live while the node runs (its inputs, its outputs, buffers kept for later)
    out_channels: int | None = None  # Conv / Gemm / MatMul: output channels (for the channel alignment)


@dataclass
class GraphMemory:
    nodes: list[NodeMemory] = field(default_factory=list)
    weight_bytes: int = 0  # every initializer (weights, biases, quantization scales and zero points)
    peak_bytes: int = 0  # the most activation bytes live at once

    def to_json(self) -> dict:
        return {"weight_bytes": self.weight_bytes, "peak_activation_bytes": self.peak_bytes,
                "layers": [vars(n) for n in self.nodes]}


def _tensor_types(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """name -> (ONNX element type, element count with the batch as 1) of every typed tensor."""
    inferred = shape_inference.infer_shapes(model)
    out = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        out[vi.name] = (t.elem_type, int(np.prod(dims)) if dims else 1)
    for init in model.graph.initializer:
        out[init.name] = (init.data_type, int(np.prod(init.dims)) if init.dims else 1)
    return out


def _bytes(elem_type: int, count: int) -> int:
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def _dtype(elem_type: int) -> str:
    return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))


def analyse(model: onnx.ModelProto) -> GraphMemory:
    """Per compute node: precision, weight bytes, output bytes and live activation bytes; totals and the peak."""
    graph, types = model.graph, _tensor_types(model)
    constants = {i.name for i in graph.initializer}
    root: dict[str, str] = {}  # tensor -> the buffer it lives in
    readers = Counter(t for n in graph.node for t in n.input)
    for n in graph.node:
        if n.op_type == "Constant":
            constants.update(n.output)
        elif n.input and n.input[0] and (n.op_type in ALIAS_OPS or n.op_type in IN_PLACE_OPS
                                         and readers[n.input[0]] == 1):
            src = root.get(n.input[0], n.input[0])
            if src in constants or n.input[0] in constants:
                constants.update(n.output)
            else:
                root[n.output[0]] = src
    buf_bytes: dict[str, int] = {}  # buffer -> bytes in its narrowest type
    for name, (elem, count) in types.items():
        if name not in constants and elem:
            b = root.get(name, name)
            buf_bytes[b] = min(buf_bytes.get(b, 1 << 62), _bytes(elem, count))
    compute = [n for n in graph.node if n.op_type not in (*ALIAS_OPS, "Constant")]
    quantized = {id(n) for n in qdq_split(graph)[0]}
    producer = {o: n for n in graph.node for o in n.output}
    first, last = {}, {}
    for step, n in enumerate(compute):
        for t in n.input:
            if t and t not in constants:
                last[root.get(t, t)] = step
        for t in n.output:
            first.setdefault(root.get(t, t), step)
    for t in graph.input:
        first[t.name] = -1
    for t in graph.output:
        last[root.get(t.name, t.name)] = len(compute)
    weight_owner = _weight_owners(compute, constants, producer)
    dims = {i.name: tuple(i.dims) for i in graph.initializer}
    out = GraphMemory(weight_bytes=sum(_bytes(*types[i.name]) for i in graph.initializer))
    for step, n in enumerate(compute):
        live = sum(b for buf, b in buf_bytes.items() if first.get(buf, step) <= step <= last.get(buf, first.get(buf, -2)))
        weights = sum(_bytes(*types[i]) for i in weight_owner.get(id(n), ()))
        outputs = sum(buf_bytes.get(root.get(t, t), 0) for t in n.output)
        out.nodes.append(NodeMemory(n.name or f"{n.op_type}_{step}", n.op_type, _onnx_module_path(n.name or ""),
                                    _precision(n, id(n) in quantized, producer, types), weights, outputs, live,
                                    _out_channels(n, dims, weight_owner.get(id(n), []))))
    out.peak_bytes = max((n.live_bytes for n in out.nodes), default=0)
    return out


def _weight_owners(compute: list, constants: set[str], producer: dict) -> dict[int, list[str]]:
    """id(compute node) -> the initializers it reads, directly or through DequantizeLinear/Reshape chains."""
    owners: dict[int, list[str]] = {}
    seen: set[str] = set()
    for n in compute:
        stack = [t for t in n.input if t in constants]
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            p = producer.get(t)
            if p is None:  # an initializer
                owners.setdefault(id(n), []).append(t)
            elif p.op_type != "Constant":
                stack.extend(i for i in p.input if i)
    return owners


def _precision(node: onnx.NodeProto, quantized: bool, producer: dict, types: dict) -> str:
    """float32 (or the node's float type), or for a quantized node the integer type of its quantized input."""
    if quantized:
        for t in node.input:
            p = producer.get(t)
            if p is not None and p.op_type == "DequantizeLinear" and p.input[0] in types:
                return _dtype(types[p.input[0]][0])
    ins = [types[t][0] for t in node.input if t in types]
    return _dtype(ins[0]) if ins else "float32"


def _out_channels(node: onnx.NodeProto, dims: dict[str, tuple[int, ...]], weights: list[str]) -> int | None:
    """Output channels of a Conv / Gemm / MatMul, from the shape of its (first 2-D or larger) weight initializer."""
    shapes = [dims[w] for w in weights if len(dims[w]) >= 2]
    if node.op_type not in ("Conv", "Gemm", "MatMul") or not shapes:
        return None
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return int(shapes[0][0] if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b) else shapes[0][-1])
