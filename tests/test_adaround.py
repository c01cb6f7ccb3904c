"""quant.ptq rounding: adaround — learned rounding lowers the INT8 output error and survives ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F

import edgecompress as ec
from edgecompress.quant.adaround import _layer_out, _window, round_layer
from edgecompress.quant.equalize import onnxruntime_weight_scales


def test_learned_rounding_lowers_the_layer_output_error():
    torch.manual_seed(0)
    layer = nn.Conv2d(8, 16, 3, padding=1)
    mix = torch.randn(8, 8)  # correlated inputs (smooth, mixed channels), as real activations are; on white noise
    x = [torch.einsum("oc,nchw->nohw", mix, F.interpolate(torch.randn(16, 8, 4, 4), size=10, mode="bilinear"))
         for _ in range(2)]  # nearest rounding is already optimal
    with torch.no_grad():
        y = [layer(a) for a in x]
    scales = onnxruntime_weight_scales(per_channel=True, reduce_range=True)  # 7 bits: a coarse grid
    s, qmin, qmax = scales(layer.weight)
    report = round_layer(layer, x, y, scales, steps=200, batch=8, gen=torch.Generator().manual_seed(0))
    assert report["mse_learned"] < 0.5 * report["mse_nearest"], report
    q = layer.weight.detach().reshape(16, -1) / s.reshape(-1, 1)
    assert torch.allclose(q, q.round(), atol=1e-3) and qmin <= q.min() and q.max() <= qmax  # on the grid
    assert torch.equal(scales(layer.weight)[0], s)  # the quantizer derives the same scales again


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_a_window_of_the_output_is_computed_from_the_input_window_under_it(stride, padding, dilation):
    layer = nn.Conv2d(4, 6, 3, stride, padding, dilation=dilation, groups=2)
    x = torch.randn(3, 4, 29, 31)
    with torch.no_grad():
        y = layer(x)
        for seed in range(5):
            xs, ys, padded = _window(layer, x, y, 5, torch.Generator().manual_seed(seed))
            assert padded and ys.shape[-2:] == (5, 5)
            assert torch.allclose(_layer_out(layer, xs, layer.weight, padded), ys, atol=1e-5)


def test_learned_rounding_on_random_windows_still_lowers_the_layer_output_error():
    torch.manual_seed(0)
    layer = nn.Conv2d(8, 16, 3, padding=1)
    mix = torch.randn(8, 8)
    x = [torch.einsum("oc,nchw->nohw", mix, F.interpolate(torch.randn(16, 8, 6, 6), size=32, mode="bilinear"))
         for _ in range(2)]
    with torch.no_grad():
        y = [layer(a) for a in x]
    scales = onnxruntime_weight_scales(per_channel=True, reduce_range=True)
    report = round_layer(layer, x, y, scales, steps=200, batch=8, gen=torch.Generator().manual_seed(0), window=8)
    assert report["mse_learned"] < 0.5 * report["mse_nearest"], report


def test_ptq_adaround_artifact_runs_in_onnxruntime(digits_task, digits_cnn, tmp_path):
    out = ec.apply("quant.ptq", digits_cnn, digits_task, workdir=tmp_path, calib_samples=64, rounding="adaround",
                   adaround_steps=50)
    graph = onnx.load(str(out.artifact.path)).graph
    ints = [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(ints) >= 3 and all(np.abs(w).max() <= 127 for w in ints)
    accuracy = digits_task.evaluate(out.artifact.runner())["accuracy"]
    assert accuracy > 0.9, accuracy
    assert set(out.model.state_dict()) == set(digits_cnn.state_dict())  # the float model is returned as it was


def test_adaround_needs_the_onnxruntime_backend_and_excludes_bias_correction(digits_task, digits_cnn):
    with pytest.raises(ValueError, match="drop bias_correction"):
        ec.apply("quant.ptq", digits_cnn, digits_task, rounding="adaround", bias_correction=True)
