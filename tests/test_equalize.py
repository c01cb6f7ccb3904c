"""Cross-layer equalization and bias correction (quant.equalize, quant.ptq equalize/bias_correction)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from torch import nn

from edgecompress import zoo
from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.nn.bn import fold_batchnorms
from edgecompress.nn.layers import build_graph
from edgecompress.quant.equalize import (
    equalize,
    find_pairs,
    onnxruntime_weight_quantizer,
    prepare,
    range_utilisation,
)
from edgecompress.registry import get
from edgecompress.settings import ExportSettings

OUTPUT_TOLERANCE = 1e-4  # CLE only rescales: float outputs stay equal up to rounding
ONNX = ExportSettings()
PYTORCH = ExportSettings(format="pytorch", runtime="torch")


class Toy(nn.Module):
    """conv -> ReLU -> conv -> linear, with deliberately uneven channel ranges."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        with torch.no_grad():
            self.conv1.weight.mul_(torch.logspace(-2, 2, 8).view(-1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.relu(self.conv1(x))).flatten(1))


def randomize_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.1, 3.0)
            m.bias.data.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("name", ["toy", "mobilenet_v2"])
def test_cle_preserves_function_and_equalizes_paired_ranges(name):
    torch.manual_seed(0)
    model = Toy().eval() if name == "toy" else randomize_bn(
        zoo.build("mobilenet_v2", (1, 8, 8), 10, width_mult=0.25, dropout=0.0))
    x = torch.randn(16, *((3, 6, 6) if name == "toy" else (1, 8, 8)))
    with torch.no_grad():
        expected = model(x)
    report = prepare(model, x, equalize_pairs=True, quantize=None, skip=lambda _: False)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=OUTPUT_TOLERANCE, rtol=0)

    pairs, _ = find_pairs(model, x[:2])
    if name == "toy":  # conv2 feeds fc through a flatten of a 4x4 map: no pair there
        assert pairs == [("conv1", "conv2")]
    else:  # every inverted residual pairs expansion -> depthwise -> projection; residual outputs are not paired
        assert ("features.2.block.0.0", "features.2.block.1.0") in pairs
        assert ("features.2.block.1.0", "features.2.block.2") in pairs
        assert all(a != "features.2.block.2" for a, _ in pairs)  # its output feeds a residual add
        assert report["pairs_equalized"] == len(pairs) > 30
    for a, b in pairs:
        first, second = model.get_submodule(a), model.get_submodule(b)
        r1 = first.weight.abs().flatten(1).amax(1)
        w2 = second.weight.abs()
        r2 = w2.flatten(1).amax(1) if getattr(second, "groups", 1) > 1 else w2.transpose(0, 1).flatten(1).amax(1)
        assert torch.allclose(r1, r2, rtol=1e-2), (a, b)
    assert report["range_utilisation_after"] > report["range_utilisation_before"]


def test_simulated_weight_quantization_matches_onnxruntime(digits_cnn, digits_task, tmp_path):
    """The bias-correction simulation quantizes weights exactly as quantize_static does (per tensor, reduce_range)."""
    config = get("quant.ptq").config(per_channel=False, reduce_range="on", calib_samples=32)
    out = get("quant.ptq")(digits_cnn, config, StageContext(task=digits_task, workdir=tmp_path))
    graph = onnx.load(str(out.artifact.path)).graph
    init = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    onnx_weights = [(init[d.input[0]].astype(np.float32) - init[d.input[2]]) * init[d.input[1]]
                    for n in graph.node if n.op_type in ("Conv", "Gemm") for d in [dq[n.input[1]]]]
    folded = copy.deepcopy(digits_cnn)
    fold_batchnorms(folded, build_graph(folded, digits_task.example_inputs(2)))
    quantize = onnxruntime_weight_quantizer(per_channel=False, reduce_range=True)
    ours = [quantize(m.weight.detach()).numpy() for m in folded.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(ours) == len(onnx_weights) == 5
    for a, b in zip(ours, onnx_weights):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * np.abs(b).max())


@pytest.fixture(scope="module")
def skewed(digits_cnn, digits_task) -> nn.Module:
    """digits_cnn with BN folded, one channel of features.4 100x larger and features.8's matching input
    weights 100x smaller: the same function, but per-tensor INT8 ranges blown up by that channel."""
    model = copy.deepcopy(digits_cnn)
    fold_batchnorms(model, build_graph(model, digits_task.example_inputs(2)))
    with torch.no_grad():
        conv_a, conv_b = model.features[4], model.features[8]
        conv_a.weight[0].mul_(100.0)
        conv_a.bias[0].mul_(100.0)
        conv_b.weight[:, 0].div_(100.0)
    return model


def ptq_accuracy(model: nn.Module, task, tmp_path, export=ONNX, **config) -> tuple[float, dict]:
    """Accuracy of the per-tensor INT8 artifact in its runtime, and the stage's ctx.info."""
    ctx = StageContext(task=task, workdir=tmp_path, export=export)
    out = get("quant.ptq")(model, get("quant.ptq").config(per_channel=False, calib_samples=128, **config), ctx)
    return task.evaluate(out.artifact.runner())["accuracy"], ctx.info


@pytest.mark.parametrize("export", [ONNX, PYTORCH],
                         ids=["onnxruntime", "torchao"])
def test_equalize_restores_collapsed_per_tensor_ptq(digits_cnn, skewed, digits_task, tmp_path, export):
    fp32 = digits_task.evaluate_model(digits_cnn)["accuracy"]
    assert abs(digits_task.evaluate_model(skewed)["accuracy"] - fp32) < 1e-9  # same function
    collapsed, _ = ptq_accuracy(skewed, digits_task, tmp_path / "plain", export)
    restored, info = ptq_accuracy(skewed, digits_task, tmp_path / "cle", export, equalize=True,
                                  bias_correction=export.format == "pytorch")
    assert collapsed < fp32 - 0.04, (fp32, collapsed)  # ORT 0.55 (7-bit weights), torchao 0.93 vs 0.98
    assert restored >= fp32 - 0.01, (fp32, restored)
    assert info["dfq"]["pairs_equalized"] == 4 and "features.4 -> features.8" in info["dfq"]["cle_pairs"]
    assert info["dfq"]["range_utilisation_worst_before"] < 0.05 < info["dfq"]["range_utilisation_worst_after"]


def test_bias_correction_reduces_mean_output_error(digits_cnn, digits_task, tmp_path):
    """Per-tensor 7-bit weights of every layer, activations float: the per-channel mean output error of the
    quantized layers shrinks, and INT8 accuracy in ONNX Runtime does not drop."""
    x = digits_task.calibration(128)
    quantize = onnxruntime_weight_quantizer(per_channel=False, reduce_range=True)

    def mean_error(model: nn.Module, reference: nn.Module) -> float:
        deployed = copy.deepcopy(model)
        with torch.no_grad():
            for m in deployed.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.copy_(quantize(m.weight))
            diff = deployed.features[:9](x) - reference.features[:9](x)  # third conv's output, pre-BN-identity
        return float(diff.mean((0, 2, 3)).abs().mean())

    folded = copy.deepcopy(digits_cnn)
    plain_report = prepare(folded, x, equalize_pairs=False, quantize=None, skip=lambda _: False)
    corrected = copy.deepcopy(folded)
    report = prepare(corrected, x, equalize_pairs=False, quantize=quantize, skip=lambda _: False)
    assert plain_report["batchnorms_folded"] == 4 and report["bias_corrected_layers"] == 5
    assert mean_error(corrected, folded) < 0.5 * mean_error(folded, folded)

    plain, _ = ptq_accuracy(digits_cnn, digits_task, tmp_path / "plain")
    with_bc, info = ptq_accuracy(digits_cnn, digits_task, tmp_path / "bc", bias_correction=True)
    assert with_bc >= plain - 0.005, (plain, with_bc)
    assert info["dfq"]["bias_corrected_layers"] == 5


def test_bias_correction_refuses_a_backend_it_cannot_simulate(digits_cnn, digits_task):
    config = get("quant.ptq").config(backend="executorch", bias_correction=True)
    with pytest.raises(EdgeCompressError, match="bias_correction simulates") as err:
        get("quant.ptq")(digits_cnn, config, StageContext(task=digits_task))
    assert "backend: onnxruntime or torchao" in str(err.value)


def test_cle_range_utilisation_and_untraceable_model_error(digits_task):
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 0.25]).view(2, 1, 1, 1))
    assert range_utilisation(conv) == pytest.approx(0.625)
    assert equalize(nn.Sequential(conv), [])["pairs_equalized"] == 0

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow: torch.fx cannot trace it

    with pytest.raises(EdgeCompressError, match="torch.fx trace") as err:
        find_pairs(Branchy(), torch.ones(1, 1, 8, 8))
    assert "equalize: false" in str(err.value)
