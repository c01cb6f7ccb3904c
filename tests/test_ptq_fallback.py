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


@pytest.mark.slow
def test_fallback_finds_the_broken_layer_and_reports_its_cost(digits_cnn, digits_task, tmp_path):
    model = copy.deepcopy(digits_cnn)  # one channel of features.4 100x larger, features.8's inputs 100x smaller:
    fold_batchnorms(model, build_graph(model, digits_task.example_inputs(2)))  # the same function, but per-tensor
    with torch.no_grad():  # INT8 weights of features.4 collapse
        model.features[4].weight[0].mul_(100.0)
        model.features[4].bias[0].mul_(100.0)
        model.features[8].weight[:, 0].div_(100.0)
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
