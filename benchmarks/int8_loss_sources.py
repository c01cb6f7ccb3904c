"""Where EfficientNet-Lite2's INT8 agreement is lost (issue 12): weights or activations, which layers, and how
sure the FP32 model is of the answers INT8 must keep.

On the ``quant.ptq`` defaults file (64 calibration crops; per-channel int8 weights, uint8 activations, QDQ):
relative output error (MSE over the FP32 outputs' mean square) on the 256 test crops of
* the INT8 file as ONNX Runtime runs it;
* weights only: the FP32 model with each weight replaced by its dequantized INT8 value (activations float);
* activations only: the INT8 file with every weighted node reading its float weights (``fallback.keep_float``
  guards them against ONNX Runtime re-quantizing them);
* each layer's INT8 weights alone in the FP32 model (the 10 costliest listed).
And the FP32 model's own margins: top-1 probability and top-1/top-2 logit gap per test crop, against the INT8
file's per-crop logit RMS error.

    python benchmarks/int8_loss_sources.py      # the committed run
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from int8_agreement import efficientnet
from onnx import numpy_helper

import edgecompress as ec
from edgecompress.quant import fallback
from edgecompress.tasks.unlabeled import agreement_metrics

RESULTS = Path(__file__).parent / "results"


def dequantized_weights(qdq: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Weighted node name -> its dequantized INT8 weight."""
    init = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    found = {}
    for n in qdq.graph.node:
        dq = producer.get(n.input[1]) if n.op_type in fallback.WEIGHTED and len(n.input) > 1 else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in init:
            q, scale = init[dq.input[0]].astype(np.float32), init[dq.input[1]]
            zero = init[dq.input[2]].astype(np.float32) if len(dq.input) > 2 else 0.0
            shape = (-1,) + (1,) * (q.ndim - 1) if np.ndim(scale) else ()
            found[n.name] = (q - np.reshape(zero, shape)) * np.reshape(scale, shape)
    return found


def with_weights(fp32: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    index = {i.name: k for k, i in enumerate(model.graph.initializer)}
    for n in model.graph.node:
        if n.name in weights:
            model.graph.initializer[index[n.input[1]]].CopyFrom(numpy_helper.from_array(weights[n.name], n.input[1]))
    return model


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    model, task = efficientnet(64)
    work = Path(tempfile.mkdtemp(prefix="int8-loss-"))
    out = ec.apply("quant.ptq", model, task, workdir=work, calib_samples=64)
    from onnxruntime.quantization import quant_pre_process

    quant_pre_process(str(next(work.rglob("model_fp32.onnx"))), str(work / "prep.onnx"))  # the file it quantized
    qdq, fp32 = onnx.load(str(out.artifact.path)), onnx.load(str(work / "prep.onnx"))
    x = task.split("test").tensors[0].numpy()
    reference = fallback.outputs(fp32, x)
    int8 = fallback.outputs(qdq, x)
    weights = dequantized_weights(qdq)
    float_weights = qdq
    for name in weights:
        float_weights = fallback._with_float_node(float_weights, fp32, name)
    error = {"int8 file": fallback.relative_error(int8, reference),
             "weights only (INT8 weights, float activations)":
                 fallback.relative_error(fallback.outputs(with_weights(fp32, weights), x), reference),
             "activations only (float weights, INT8 activations)":
                 fallback.relative_error(fallback.outputs(float_weights, x), reference)}
    print(error, flush=True)
    probe = x[:32]
    probe_ref = fallback.outputs(fp32, probe)
    layers = sorted(((fallback.relative_error(fallback.outputs(with_weights(fp32, {n: w}), probe), probe_ref), n)
                     for n, w in weights.items()), reverse=True)
    ordered = np.sort(reference, axis=1)
    gap = ordered[:, -1] - ordered[:, -2]
    probs = np.exp(reference - reference.max(1, keepdims=True))
    top1 = (probs / probs.sum(1, keepdims=True)).max(1)
    rms = np.sqrt(((int8 - reference) ** 2).mean(1))
    disagree = int8.argmax(1) != reference.argmax(1)
    result = {
        "command": "python benchmarks/int8_loss_sources.py " + " ".join(sys.argv[1:]),
        "relative_output_error": error, "agreement": agreement_metrics(int8, reference),
        "weight_layers_top10 (32 test crops)": {n: e for e, n in layers[:10]},
        "weight_layers_sum": float(sum(e for e, _ in layers)),
        "fp32_top1_probability_median": float(np.median(top1)),
        "fp32_top1_probability_below_0.3": float((top1 < 0.3).mean()),
        "fp32_logit_gap_percentiles_5_10_25_50": np.percentile(gap, [5, 10, 25, 50]).round(4).tolist(),
        "int8_logit_rms_error_median": float(np.median(rms)),
        "share_gap_below_2x_int8_rms": float((gap < 2 * rms).mean()),
        "disagreeing_crops": int(disagree.sum()), "their_gap_median": float(np.median(gap[disagree])),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "int8_loss_sources.json").write_text(json.dumps(result, indent=1))
    lines = ["# Where EfficientNet-Lite2's INT8 agreement is lost (quant.ptq defaults, 64 calibration crops)", "",
             f"Command: `{result['command'].strip()}`; 256 test crops; shared 2-core machine.", ""]
    lines += [f"- {key}: {json.dumps(value)}" for key, value in result.items() if key != "command"]
    (RESULTS / "int8_loss_sources.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
