"""ExecuTorch (.pte, XNNPACK): FP32 export matches PyTorch, INT8 (XNNPACK quantizer) keeps the float model's
predictions in a smaller file, any batch runs, a corrupt file is a clear error, ``fastest`` picks a runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgecompress as ec
from edgecompress.errors import EdgeCompressError
from edgecompress.export import Artifact, export
from edgecompress.runcompare import resolve_fastest
from edgecompress.settings import ExportSettings

EXECUTORCH = ExportSettings(format="executorch", warmup=2, repeats=5)
FP32_ATOL = 1e-4  # measured: 4e-6 on the trained digits CNN (logits of magnitude ~10)


@pytest.fixture(scope="module")
def test_inputs(digits_task):
    x, y = digits_task.split("test").tensors
    return x.numpy(), y.numpy()


@pytest.fixture(scope="module")
def float_logits(digits_cnn, test_inputs):
    with torch.no_grad():
        return digits_cnn(torch.from_numpy(test_inputs[0])).numpy()


@pytest.fixture(scope="module")
def fp32_pte(digits_cnn, digits_task, tmp_path_factory):
    return export(digits_cnn, digits_task.example_inputs(1), tmp_path_factory.mktemp("pte"), EXECUTORCH)


@pytest.fixture(scope="module")
def int8_pte(digits_cnn, digits_task, tmp_path_factory):
    out = ec.apply("quant.ptq", digits_cnn, digits_task, export=EXECUTORCH, calib_samples=128,
                   workdir=tmp_path_factory.mktemp("int8"))
    return out.artifact


def test_format_picks_its_runtime():
    assert ExportSettings(format="executorch").runtime == "executorch"
    assert ExportSettings(format="onnx").runtime == "onnxruntime"


@pytest.mark.slow  # the XNNPACK lowering takes ~10 s
def test_fp32_pte_matches_pytorch_at_any_batch(fp32_pte, test_inputs, float_logits):
    assert fp32_pte.path.suffix == ".pte" and fp32_pte.format == "executorch"
    assert fp32_pte.details["xnnpack_nodes"] > 0  # convolutions, BN, ReLU, pooling and linear run in XNNPACK
    run = fp32_pte.runner()
    x = test_inputs[0]
    for batch in (1, 7):
        np.testing.assert_allclose(run(x[:batch]), float_logits[:batch], atol=FP32_ATOL, rtol=0)
    np.testing.assert_allclose(run(x), float_logits, atol=FP32_ATOL, rtol=0)  # 360 > max batch: run in chunks


@pytest.mark.slow  # the INT8 lowering takes ~15 s
def test_int8_pte_keeps_predictions_in_a_smaller_file(int8_pte, fp32_pte, test_inputs, float_logits):
    assert int8_pte.precision == "int8" and int8_pte.path.name == "model_int8.pte"
    logits = int8_pte.runner()(test_inputs[0])
    agreement = (logits.argmax(1) == float_logits.argmax(1)).mean()
    accuracy, float_accuracy = ((out.argmax(1) == test_inputs[1]).mean() for out in (logits, float_logits))
    assert agreement >= 0.97
    assert accuracy >= float_accuracy - 0.01
    assert int8_pte.size_bytes * 3 < fp32_pte.size_bytes  # int8 weights: ~3.6x smaller program
    assert int8_pte.runner()(test_inputs[0][:7]).shape == (7, 10)


def test_missing_and_corrupt_pte(tmp_path):
    art = Artifact(tmp_path / "m.pte", "executorch", "executorch")
    with pytest.raises(EdgeCompressError, match="not found"):
        art.runner()
    art.path.write_bytes(b"not a program" * 10)
    with pytest.raises(EdgeCompressError, match="cannot load the ExecuTorch program") as err:
        art.runner()
    assert "m.pte" in str(err.value)


@pytest.mark.slow  # exports and benchmarks both runtimes
def test_fastest_picks_one_runtime_and_records_both(digits_task, tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()  # lowers in ~1 s
    settings, choice = resolve_fastest(model, digits_task, ExportSettings(format="fastest", warmup=2, repeats=5),
                                       tmp_path)
    assert {c["runtime"] for c in choice["candidates"]} == {"onnxruntime", "executorch"}
    assert all(c["latency_p50_ms"] > 0 for c in choice["candidates"])
    best = min(choice["candidates"], key=lambda c: c["latency_p50_ms"])
    assert choice["chosen"] == best["runtime"] == settings.runtime
    assert settings.format == best["format"] != "fastest"
