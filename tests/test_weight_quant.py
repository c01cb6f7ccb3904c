"""quant.weight and quant.mixed: quantizer formulas, packed bytes, ONNX Runtime equals the dequantized PyTorch
model, GPTQ beats round-to-nearest, the mixed plan meets its budget, clear errors on bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.quant.mixed import plan
from edgecompress.quant.weights import Hessian, QuantSpec, gptq, quantize_layers, rtn, write_weight_only_onnx
from edgecompress.nn.capture import capture
from edgecompress.registry import get
from edgecompress.settings import ExportSettings

ORT_TOLERANCE = 1e-5  # ONNX Runtime vs PyTorch with the same dequantized weights (float32 arithmetic order only)


class Toy(nn.Module):
    """A conv, a depthwise conv, a linear with an odd number of weights (7 x 33) and a 3-D MatMul linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)
        self.fc = nn.Linear(8 * 4 + 1, 7)
        self.seq = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(torch.relu(self.conv(x))).flatten(1)[:, :32]
        h = self.fc(torch.cat([h, h[:, :1]], dim=1))[:, :6]
        return self.seq(h.reshape(-1, 2, 3).repeat(1, 1, 2)).flatten(1)


def _export(model: nn.Module, specs: dict[str, QuantSpec], x: torch.Tensor, tmp_path, algorithm="rtn"):
    quantized, table = quantize_layers(model, specs, x, algorithm)
    artifact, fp32, names = write_weight_only_onnx(model, quantized, x[:1], tmp_path / "w.onnx", 17)
    return quantized, table, artifact, fp32, names


def test_quantizer_matches_formula():
    w = torch.tensor([[1.4, -0.7, 0.1, 0.0, -2.1, 0.3], [0.0, 0.0, 0.0, 0.0, 0.5, -0.25]])
    q = rtn(w, QuantSpec(bits=4, group_size=4))  # groups: columns 0-3 and the smaller 4-5
    scale = torch.tensor([[1.4 / 7, 2.1 / 7], [1.0, 0.5 / 7]])  # an all-zero group gets scale 1
    assert torch.allclose(q.scale, scale)
    expected = torch.clamp(torch.round(w / scale.repeat_interleave(4, dim=1)[:, :6]), -7, 7)
    assert torch.equal(q.codes.float(), expected)
    assert q.codes.tolist()[0] == [7, -4, 0, 0, -7, 1]
    asym = rtn(torch.tensor([[-1.0, 0.6, 2.0]]), QuantSpec(bits=2, symmetric=False))  # range [-1, 2] on [-2, 1]
    assert asym.scale.item() == pytest.approx(1.0) and asym.zero.item() == -1
    assert asym.codes.tolist() == [[-2, 0, 1]] and asym.dequantize().tolist() == [[-1.0, 1.0, 2.0]]
    assert QuantSpec(bits=4, group_size=64).group(9) == 9  # fewer inputs than the group: one scale per row


@pytest.mark.parametrize("spec", [QuantSpec(4, 8), QuantSpec(3, 0, symmetric=False), QuantSpec(8, 16)])
def test_onnx_matches_dequantized_torch_and_packs(spec, tmp_path):
    torch.manual_seed(0)
    model, x = Toy().eval(), torch.randn(16, 3, 8, 8)
    layers = ["conv", "dw", "fc", "seq"]
    quantized, table, artifact, fp32, names = _export(model, {n: spec for n in layers}, x, tmp_path)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(artifact.runner()(x.numpy()) - expected).max() < ORT_TOLERANCE
    inits = {i.name: i for i in onnx.load(str(artifact.path)).graph.initializer}
    for layer in layers:
        n = model.get_submodule(layer).weight.numel()
        packed = inits[f"{names[layer]}_q"]
        assert len(packed.raw_data) == (math.ceil(n / 2) if spec.bits <= 4 else n)  # fc: 231 values -> 116 bytes
        assert table[layer]["bytes"] == quantized[layer].nbytes
    saved = fp32.size_bytes - artifact.size_bytes
    fp32_weights = sum(4 * model.get_submodule(n).weight.numel() for n in layers)
    stored = sum(t["bytes"] for t in table.values())
    assert fp32_weights - stored - 1500 < saved <= fp32_weights - stored  # graph overhead: DQ/Reshape nodes


def test_gptq_reduces_layer_output_error(digits_cnn, digits_task):
    x = digits_task.calibration(256, seed=0)
    layer = digits_cnn.features[4]  # conv 16 -> 32 on real inputs
    inputs = capture(digits_cnn, "features.4", x, "input")
    hessian = Hessian(layer)
    hessian.add(inputs)
    w = layer.weight.detach().flatten(1)

    @torch.no_grad()
    def output_error(q):
        conv = nn.functional.conv2d
        return float((conv(inputs, q.dequantize().reshape(layer.weight.shape), padding=1)
                      - conv(inputs, layer.weight, padding=1)).pow(2).mean())

    for spec in (QuantSpec(3, 0), QuantSpec(4, 32)):
        q, _ = gptq(w, hessian.matrix(0), spec)
        assert output_error(q) < 0.8 * output_error(rtn(w, spec))


def _stage(name, model, task, **config):
    stage, ctx = get(name), StageContext(task=task, progress=False)
    out = stage(model, stage.config(**config), ctx)
    return task.evaluate(out.artifact.runner())["accuracy"], ctx.info, out.artifact


def test_weight_stage_gptq_vs_rtn_on_digits(digits_cnn, digits_task):
    fp32 = digits_task.evaluate_model(digits_cnn)["accuracy"]
    rtn_acc, _, _ = _stage("quant.weight", digits_cnn, digits_task, bits=3, algorithm="rtn")
    gptq_acc, info, artifact = _stage("quant.weight", digits_cnn, digits_task, bits=3, algorithm="gptq")
    assert gptq_acc >= rtn_acc - 0.005 and gptq_acc > fp32 - 0.03
    assert info["onnx_max_abs_diff"] < 1e-4 and artifact.precision == "fp32-w3"
    assert info["weight_bytes"] == info["weight_bytes_predicted"] < 0.2 * info["weight_bytes_fp32"]
    assert info["file_bytes"] < 0.2 * info["fp32_file_bytes"]
    assert info["layers"]["features.0"]["group"] == 9  # 1 x 3 x 3 inputs < group 32: one scale per channel
    assert info["layers"]["features.4"]["group"] == 32


def test_mixed_meets_budget_and_beats_uniform_lowest(digits_cnn, digits_task):
    low_acc, _, _ = _stage("quant.weight", digits_cnn, digits_task, bits=2, algorithm="rtn")
    acc, info, artifact = _stage("quant.mixed", digits_cnn, digits_task, candidate_bits=[2, 8], size_budget=0.2,
                                 algorithm="rtn", calib_samples=128)
    assert info["weight_bytes"] <= info["budget_bytes"] == int(0.2 * info["weight_bytes_fp32"])
    assert acc >= low_acc and set(info["plan"].values()) == {2, 8}
    assert artifact.precision == "fp32-w2/8" and info["onnx_max_abs_diff"] < 1e-4


def test_plan_is_the_exact_knapsack_optimum():
    gen = np.random.default_rng(0)
    costs = {f"l{i}": {b: (int(gen.integers(10, 100)) * b, float(gen.random()) / b) for b in (2, 4, 8)}
             for i in range(6)}
    budget = 1500
    best = min((sum(costs[n][b][1] for n, b in zip(costs, bits)), bits)
               for bits in itertools.product((2, 4, 8), repeat=6)
               if sum(costs[n][b][0] for n, b in zip(costs, bits)) <= budget)
    choice, used, cost = plan(costs, budget)
    assert cost == pytest.approx(best[0]) and used <= budget and tuple(choice.values()) == best[1]


def test_bad_input(digits_cnn, digits_task):
    weight, mixed = get("quant.weight"), get("quant.mixed")
    for bad in ({"bits": 1}, {"bits": 9}, {"group_size": 3}, {"algorithm": "awq"}):
        with pytest.raises(ValidationError):
            weight.config(**bad)
    with pytest.raises(ValidationError, match="outside the supported 2-8"):
        mixed.config(candidate_bits=[4, 16])
    with pytest.raises(EdgeCompressError, match="smallest achievable size"):
        _stage("quant.mixed", digits_cnn, digits_task, candidate_bits=[4, 8], size_budget=0.1, algorithm="rtn")
    with pytest.raises(EdgeCompressError, match="not a module"):
        _stage("quant.weight", digits_cnn, digits_task, exclude=["features.99"], algorithm="rtn")
    ctx = StageContext(task=digits_task, progress=False, export=ExportSettings(format="pytorch", runtime="torch"))
    with pytest.raises(EdgeCompressError, match="export.format"):
        weight(digits_cnn, weight.config(), ctx)


def test_excluded_layers_stay_float(digits_cnn, digits_task):
    _, info, artifact = _stage("quant.weight", digits_cnn, digits_task, bits=4, algorithm="rtn", exclude=["classifier"])
    assert info["float_layers"] == {"classifier": "excluded by the config"} and "classifier" not in info["layers"]
    gemm = next(n for n in onnx.load(str(artifact.path)).graph.node if n.op_type == "Gemm")
    producers = {o for n in onnx.load(str(artifact.path)).graph.node for o in n.output}
    assert gemm.input[1] not in producers  # still a float initializer
