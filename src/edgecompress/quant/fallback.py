"""Per-layer sensitivity of an INT8 QDQ ONNX model, measured in ONNX Runtime, for ``quant.ptq``'s ``float_fallback``.

A layer's sensitivity is how much the INT8 model's output error drops when that layer alone runs in float: its
weight and bias inputs are rewired from the DequantizeLinear nodes to the float initializers of the pre-processed
FP32 model, everything else staying quantized (its input activation too: what ``quantize_static`` does to an
excluded node whose producer stays quantized). The output error is the
mean squared difference from the FP32 model's outputs relative to their mean square, on a few calibration inputs.
One session per weighted layer, no re-quantization. The costliest layers are then excluded from quantization.

ONNX Runtime's graph optimizer (``WeightBiasQuantization``, basic level, in the versions we ship) quantizes again the
float weights of a Conv/Gemm/MatMul that reads a DequantizeLinear output: per tensor, so a layer "kept in float"
ran as a per-tensor INT8 layer, worse than the per-channel one it replaced (EfficientNet-Lite2's first depthwise
conv: relative output error 0.20 instead of 0.018). :func:`keep_float` puts a Clip to the float32 limits (the
identity) between that DequantizeLinear and the layer, which the optimizer leaves alone.
"""

from __future__ import annotations

import time

import numpy as np
import onnx

from edgecompress.runtimes.onnxruntime import session

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
GUARD = "_keep_float"  # suffix of the identity Clip nodes :func:`keep_float` inserts


def keep_float(model: onnx.ModelProto, node_names: list[str]) -> list[str]:
    """In place: each named weighted node whose first input is a DequantizeLinear output reads it through an
    identity Clip, so ONNX Runtime does not quantize its float weights at load; returns the nodes guarded."""
    graph = model.graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    targets = [n for n in graph.node if n.name in set(node_names) and n.op_type in WEIGHTED
               and n.input[0] in dequantized]
    if targets and not any(i.name == "float_limits_low" for i in graph.initializer):
        limit = float(np.finfo(np.float32).max)
        graph.initializer.extend([onnx.helper.make_tensor("float_limits_low", onnx.TensorProto.FLOAT, [], [-limit]),
                                  onnx.helper.make_tensor("float_limits_high", onnx.TensorProto.FLOAT, [], [limit])])
    for node in targets:
        guarded = node.input[0] + GUARD + "_" + node.name
        clip = onnx.helper.make_node("Clip", [node.input[0], "float_limits_low", "float_limits_high"], [guarded],
                                     name=node.name + GUARD)
        graph.node.insert(list(graph.node).index(node), clip)
        node.input[0] = guarded
    return [n.name for n in targets]


def outputs(model: onnx.ModelProto | str, inputs: np.ndarray, batch: int = 16) -> np.ndarray:
    run = session(model.SerializeToString() if isinstance(model, onnx.ModelProto) else model, threads=1)
    name = run.get_inputs()[0].name
    return np.concatenate([run.run(None, {name: inputs[i:i + batch]})[0] for i in range(0, len(inputs), batch)])


def _with_float_node(qdq: onnx.ModelProto, fp32: onnx.ModelProto, node_name: str) -> onnx.ModelProto:
    """``qdq`` with the node ``node_name`` reading its float weight and bias from the FP32 model (copied under new
    names); its activation input stays as it is."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    source = next(n for n in fp32.graph.node if n.name == node_name)
    initializers = {i.name: i for i in fp32.graph.initializer}
    node = next(n for n in model.graph.node if n.name == node_name)
    for i, name in enumerate(source.input):
        if name in initializers:
            copy = model.graph.initializer.add()
            copy.CopyFrom(initializers[name])
            copy.name = f"{name}_float_fallback"
            node.input[i] = copy.name
    keep_float(model, [node_name])
    return model


def relative_error(out: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean((out - reference) ** 2) / max(float(np.mean(reference ** 2)), 1e-30))


def sensitivities(qdq_path: str, fp32_path: str, inputs: np.ndarray) -> tuple[float, dict[str, float]]:
    """The INT8 model's output error, and per weighted quantized node the error with that node alone in float."""
    qdq, fp32 = onnx.load(qdq_path), onnx.load(fp32_path)
    reference = outputs(fp32, inputs)
    base = relative_error(outputs(qdq, inputs), reference)
    float_nodes = {n.name for n in fp32.graph.node}
    dequantized = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    nodes = [n.name for n in qdq.graph.node if n.op_type in WEIGHTED and n.name in float_nodes
             and any(i in dequantized for i in n.input)]
    return base, {name: relative_error(outputs(_with_float_node(qdq, fp32, name), inputs), reference)
                  for name in nodes}


def latency_ms(path: str, example: np.ndarray, threads: int, repeats: int = 30) -> float:
    """Median in-process latency of one run of ``path`` on ``example`` (after 5 warm-up runs)."""
    run = session(path, threads)
    name = run.get_inputs()[0].name
    times = []
    for i in range(repeats + 5):
        start = time.perf_counter()
        run.run(None, {name: example})
        if i >= 5:
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))
