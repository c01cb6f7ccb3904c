"""Target profiles, `edgecompress check` and hw.adapt: planted unsupported operators and memory overflows are found,
bad profiles are clear errors, activation substitution keeps accuracy, channel rounding and memory fit work."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from clean_errors import expect_clean_error
from edgecompress import registry, zoo
from edgecompress.cli import app
from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.target.check import check_module, check_onnx
from edgecompress.target.profiles import BUILTIN, load_target
from edgecompress.train import accuracy, train

runner = CliRunner()


def conv_relu() -> nn.Module:
    """Conv 1->8 (3x3, pad 1) + ReLU on 1x16x16: input 1 KiB, output 8 KiB (FP32), weights 8*9*4 + 8*4 bytes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()).eval()


def write_profile(tmp_path, text: str):
    path = tmp_path / "board.yaml"
    path.write_text(text)
    return path


def test_builtin_profiles():
    assert set(BUILTIN) == {"cpu", "npu-int8", "mcu"}
    mcu = load_target("mcu")
    assert mcu.sram == 256 * 1024 and mcu.flash == 1024 * 1024 and mcu.integer_only
    assert not load_target("npu-int8").runs("HardSwish") and load_target("cpu").runs("Erf")


def test_memory_of_a_planted_overflow(tmp_path):
    """Peak = input (1 KiB) + conv output (8 KiB; the ReLU runs in place); over a 4 KiB SRAM by 5 KiB."""
    board = write_profile(tmp_path, "name: tiny\noperators: [Conv, Relu]\nsram: 4 KiB\nflash: 1 KiB\n")
    result = check_module(conv_relu(), torch.zeros(1, 1, 16, 16), load_target(board))
    assert result.memory.peak_bytes == 1024 + 8 * 1024
    assert result.memory.weight_bytes == 8 * 9 * 4 + 8 * 4
    assert result.overflows == ["peak activations 9.0 KiB > SRAM 4.0 KiB by 5.0 KiB (125.0%)"]
    assert not result.unsupported and not result.fits
    path = export_onnx(conv_relu(), torch.zeros(1, 1, 16, 16), tmp_path / "m.onnx").path
    res = runner.invoke(app, ["check", str(path), "--target", str(board)], env={"COLUMNS": "200"})
    assert res.exit_code == 1, res.output
    assert "peak activations 9.0 KiB > SRAM 4.0 KiB by 5.0 KiB" in res.output and "does not fit" in res.output
    res = runner.invoke(app, ["check", str(path), "--target", "cpu"])
    assert res.exit_code == 0 and "fits the target" in res.output


def test_planted_unsupported_operator(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 16, 1), nn.Tanh()).eval()
    result = check_module(model, torch.zeros(1, 1, 8, 8), load_target("npu-int8"))
    ops = {i.what: i for i in result.unsupported}
    assert "operator Erf (from GELU)" in ops and ops["operator Erf (from GELU)"].nodes == ["1"]
    assert "operator Tanh (from Tanh)" in ops and "hw.adapt" in ops["operator Erf (from GELU)"].fix
    assert "float32 compute" in ops and "quant.ptq" in ops["float32 compute"].fix  # integer-only target
    path = export_onnx(model, torch.zeros(1, 1, 8, 8), tmp_path / "gelu.onnx").path
    res = runner.invoke(app, ["check", str(path), "--target", "npu-int8", "--no-layers"], env={"COLUMNS": "200"})
    assert res.exit_code == 1 and "cannot run operator Erf" in res.output, res.output


def test_int8_graph_is_judged_at_one_byte(tmp_path):
    """A QDQ graph: nodes run in int8 and activations take one byte each (input 256 B + output 2 KiB)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": np.random.default_rng(i).standard_normal((1, 1, 16, 16), np.float32)}
                                 for i in range(8)])

        def get_next(self):
            return next(self.batches, None)

    fp32 = export_onnx(conv_relu(), torch.zeros(1, 1, 16, 16), tmp_path / "m.onnx").path
    quantize_static(str(fp32), str(tmp_path / "q.onnx"), Reader(), activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    result = check_onnx(onnx.load(str(tmp_path / "q.onnx")), load_target("npu-int8"))
    assert {n.precision for n in result.memory.nodes} == {"int8"}
    assert result.memory.peak_bytes == 256 + 2048 and not result.unsupported and result.fits


@pytest.mark.parametrize("text,words", [
    ("name: b\noperators: [Conv, Conv2D, Relu]\n", ["'Conv2D'", "did you mean 'Conv'", "allowed values", "Gemm"]),
    ("name: b\nsram: lots\n", ["sram", "lots"]),
    ("name: b\nflash_kb: 3\n", ["flash_kb", "allowed keys"]),
    ("operators: [Conv]\n", ["name", "required"]),
    ("name: b\ndtypes: [int4]\n", ["dtypes", "int8"]),
])
def test_profile_yaml_errors(tmp_path, text, words):
    board = write_profile(tmp_path, text)
    with pytest.raises(EdgeCompressError) as err:
        load_target(board)
    for word in words:
        assert word in str(err.value), str(err.value)
    expect_clean_error(["check", "resnet20", "--target", board], ["invalid target profile"])


def test_unknown_target_names_the_builtins():
    expect_clean_error(["check", "resnet20", "--target", "npu"], ["unknown target", "cpu, npu-int8, mcu"])


def _silu_cnn(task, epochs: int = 3) -> nn.Module:
    """mnist_cnn with every ReLU a SiLU, trained ``epochs`` epochs."""
    torch.manual_seed(0)
    model = zoo.build("mnist_cnn", task.input_shape, task.num_classes)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.ReLU):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, nn.SiLU())
    if epochs:
        train(model, task, epochs=epochs, lr=0.05, progress=False)
    return model.eval()


def _adapt(model, task, **config):
    stage = registry.get("hw.adapt")
    ctx = StageContext(task=task, progress=False)
    return stage(model, stage.config(**config), ctx).eval(), ctx.info


@pytest.mark.slow  # ~6 s: trains the SiLU model, then recovers it
def test_adapt_substitutes_activations_and_keeps_accuracy(tmp_path, digits_task):
    model = _silu_cnn(digits_task)
    before = accuracy(model, digits_task, "test")
    adapted, info = _adapt(model, digits_task, target="npu-int8", epochs=2)
    assert set(info["substituted"].values()) == {"SiLU -> ReLU6"} and len(info["substituted"]) == 4
    assert not any(isinstance(m, nn.SiLU) for m in adapted.modules())
    assert accuracy(adapted, digits_task, "test") >= before - 0.03
    after = check_module(adapted, digits_task.example_inputs(1), load_target("npu-int8"))
    assert [i.what for i in after.unsupported] == ["float32 compute"]  # what is left: quantize it
    assert any("float32 compute" in c for c in info["cannot"])
    board = write_profile(tmp_path, "name: hs\noperators: [Conv, HardSwish, MaxPool, GlobalAveragePool, Flatten, "
                                    "Gemm]\n")  # runs hard-swish (auto's first choice), not SiLU's Sigmoid
    hs, _ = _adapt(model, digits_task, target=str(board), epochs=0)
    assert sum(isinstance(m, nn.Hardswish) for m in hs.modules()) == 4
    with pytest.raises(EdgeCompressError, match="runs none of the replacement activations"):
        _adapt(model, digits_task, target="npu-int8", activation="hardswish")
    same, info = _adapt(model, digits_task, target="cpu")  # runs everything: nothing to do, outputs unchanged
    x = digits_task.example_inputs(16)
    assert info["substituted"] == {} and torch.equal(same(x), model(x))


def test_adapted_activations_survive_a_checkpoint_round_trip(tmp_path, digits_task):
    from edgecompress.checkpoint import load_model, save_model

    adapted, info = _adapt(_silu_cnn(digits_task, epochs=0), digits_task, target="npu-int8", epochs=0)
    assert set(info["substituted"].values()) == {"SiLU -> ReLU6"}
    save_model(adapted, tmp_path / "ckpt")
    rebuilt = load_model(tmp_path / "ckpt", lambda arch: zoo.build("mnist_cnn", digits_task.input_shape,
                                                                      digits_task.num_classes)).eval()
    assert sum(isinstance(m, nn.ReLU6) for m in rebuilt.modules()) == 4  # the zoo's ReLUs are not back
    x = digits_task.example_inputs(8)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), adapted(x), atol=1e-6)


def test_adapt_rounds_channels_to_the_alignment(tmp_path, digits_cnn, digits_task):
    board = write_profile(tmp_path, "name: b12\nchannel_alignment: 12\n")
    adapted, info = _adapt(digits_cnn, digits_task, target=str(board), epochs=0)
    convs = [m.out_channels for m in adapted.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [12, 24, 60, 120] and adapted.classifier.out_features == 10  # from 16, 32, 64, 128
    assert info["aligned_channels_removed"] == 4 + 8 + 4 + 8
    assert adapted(digits_task.example_inputs(2)).shape == (2, 10)


def test_adapt_fit_shrinks_to_the_memory_or_says_by_how_much(tmp_path, digits_cnn, digits_task):
    fit = write_profile(tmp_path, "name: small\ndtypes: [int8]\nsram: 1 KiB\n")  # needs 1.25 KiB at int8
    adapted, info = _adapt(copy.deepcopy(digits_cnn), digits_task, target=str(fit), fit=True, epochs=0)
    estimate = info["memory_after_at_target_precision"]
    assert 0 < info["fit_ratio"] < 0.9 and estimate["overflows"] == []
    assert float(estimate["peak_activations"].split()[0]) <= 1.0
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("name: tiny\ndtypes: [int8]\nsram: 100\n")
    with pytest.raises(EdgeCompressError) as err:
        _adapt(digits_cnn, digits_task, target=str(tiny), fit=True, epochs=0)
    assert "even with 90% of every layer's channels removed" in err.value.what and "SRAM 0.1 KiB by" in err.value.what


def test_recipe_target_adds_fit_checks(tmp_path):
    from edgecompress.pipeline import Pipeline
    from edgecompress.recipe import parse_recipe

    with pytest.raises(EdgeCompressError, match="unknown target 'board'"):
        parse_recipe({"target": "board"})
    recipe = parse_recipe({"model": {"zoo": "mnist_cnn"}, "data": {"dataset": "digits"}, "target": "mcu",
                           "stages": [], "export": {"repeats": 2, "warmup": 1}, "targets": {"max_accuracy_drop": None}})
    result = Pipeline(recipe, tmp_path / "run", progress=False, report=False).run()
    rows = {c["target"]: c for c in result.checks}
    assert rows["mcu: operators and types"]["passed"] is False  # FP32 on an int8-only target
    assert rows["mcu: peak activations in SRAM (KiB)"]["passed"] is True
    res = runner.invoke(app, ["check", str(tmp_path / "run"), "--target", "mcu", "--no-layers"])  # the final artifact
    assert res.exit_code == 1 and "cannot run float32 compute" in res.output, res.output
