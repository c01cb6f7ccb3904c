"""quant.ptq float_fallback: the layers whose quantization costs most, measured on the INT8 ONNX file, stay float."""

from __future__ import annotations

import copy

import pytest
import torch

from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.nn.bn import fold_batchnorms
from edgecompress.nn.layers import build_graph
from edgecompress.registry import get
from edgecompress.settings import ExportSettings


def skewed(digits_cnn, digits_task):
    """One channel of features.4 100x larger, features.8's inputs 100x smaller: the same function, but per-tensor
    INT8 weights of features.4 collapse."""
    model = copy.deepcopy(digits_cnn)
    fold_batchnorms(model, build_graph(model, digits_task.example_inputs(2)))
    with torch.no_grad():
        model.features[4].weight[0].mul_(100.0)
        model.features[4].bias[0].mul_(100.0)
        model.features[8].weight[:, 0].div_(100.0)
    return model


@pytest.mark.slow
def test_fallback_finds_the_broken_layer_and_reports_its_cost(digits_cnn, digits_task, tmp_path):
    model = skewed(digits_cnn, digits_task)
    accuracy = {}
    for fallback in (0, 1):
        ctx = StageContext(task=digits_task, workdir=tmp_path / str(fallback))
        config = get("quant.ptq").config(per_channel=False, calib_samples=128, float_fallback=fallback)
        out = get("quant.ptq")(model, config, ctx)
        accuracy[fallback] = digits_task.evaluate(out.artifact.runner())["accuracy"]
    report = ctx.info["float_fallback"]
    assert [layer["module"] for layer in report["layers"].values()] == ["features.4"], report
    assert [n for n in ctx.info["float_nodes"] if n.endswith("(Conv)")] == ["/features/features.4/Conv (Conv)"]
    (layer,) = report["layers"].values()
    assert report["kept"] == "with_fallback"
    assert report["with_fallback"]["output_error"] < 0.8 * report["all_int8"]["output_error"], report
    assert report["with_fallback"]["output_error"] == pytest.approx(layer["output_error_with_it_in_float"], rel=1e-6)
    assert report["with_fallback"]["int8_bytes"] > report["all_int8"]["int8_bytes"]
    assert report["all_int8"]["latency_ms"] > 0 and report["with_fallback"]["latency_ms"] > 0
    assert accuracy[1] > accuracy[0], accuracy


def test_fallback_needs_the_onnxruntime_backend(digits_cnn, digits_task):
    ctx = StageContext(task=digits_task, export=ExportSettings(format="pytorch", runtime="torch"))
    with pytest.raises(EdgeCompressError, match="float_fallback"):
        get("quant.ptq")(digits_cnn, get("quant.ptq").config(float_fallback=2), ctx)


def test_an_excluded_layer_stays_float_when_onnxruntime_optimizes_the_file(digits_cnn, digits_task, tmp_path):
    import numpy as np
    import onnxruntime as ort

    ctx = StageContext(task=digits_task, workdir=tmp_path)
    config = get("quant.ptq").config(calib_samples=64, exclude=["features.4"])
    path = str(get("quant.ptq")(skewed(digits_cnn, digits_task), config, ctx).artifact.path)
    x = digits_task.calibration(64).numpy()
    outputs = {}
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        run = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        outputs[level] = run.run(None, {run.get_inputs()[0].name: x})[0]
    plain, optimized = outputs.values()  # without the guard ORT re-quantized features.4 per tensor: outputs diverged
    assert np.abs(optimized - plain).max() < 1e-3 * np.abs(plain).max()
    assert "/features/features.4/Conv (Conv)" in ctx.info["float_nodes"]


def test_fallback_and_bias_correction_do_not_combine(digits_cnn, digits_task):
    with pytest.raises(ValueError, match="use one of the two"):
        get("quant.ptq").config(float_fallback=2, bias_correction=True)
