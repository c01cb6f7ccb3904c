"""`bench` and `inspect` on damaged artifacts, on directories that are not runs and on bad --input-shape values end
in a clean `error:` line (exit 2) that names the problem, never a traceback or a process abort (random bytes in a
.pte used to abort in ExecuTorch's runtime), and touch no user file; `bench RUN_DIR` works for a callable model."""

from __future__ import annotations

import io
import random
import zipfile

import pytest
import torch
import yaml
from typer.testing import CliRunner

from clean_errors import Sentinel, expect_clean_error
from edgecompress import zoo
from edgecompress.cli import app
from edgecompress.export import export, export_onnx
from edgecompress.measure import latency
from edgecompress.settings import ExportSettings

SHAPE = (1, 8, 8)


def tiny_model() -> torch.nn.Module:
    return zoo.build("mnist_cnn", SHAPE, 10).eval()


@pytest.fixture(scope="module")
def real_onnx(tmp_path_factory) -> bytes:
    """The bytes of a real ONNX export of a tiny model."""
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    return export_onnx(tiny_model(), torch.zeros(1, *SHAPE), path).path.read_bytes()


def noise(n: int = 4096) -> bytes:
    return random.Random(0).randbytes(n)  # fixed bytes: these abort ExecuTorch's runtime when loaded unchecked


def zip_without_pt2() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes/readme.txt", "a zip, but no torch.export archive")
    return buffer.getvalue()


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# case -> (file name under bad/, its bytes from the real ONNX bytes (None: no file; "dir": a folder), words)
CASES = {
    "random-bytes .pte": ("model.pte", lambda real: noise(), ["model.pte", "not a .pte file", "ET12"]),
    "empty .pte": ("model.pte", lambda real: b"", ["model.pte", "empty"]),
    "text .onnx": ("model.onnx", lambda real: b"ir_version: 8\ngraph { }\n", ["model.onnx", "not a valid ONNX model"]),
    "empty .onnx": ("model.onnx", lambda real: b"", ["model.onnx", "empty"]),
    "truncated .onnx": ("model.onnx", half, ["model.onnx", "not a valid ONNX model"]),
    "random-bytes .onnx": ("model.onnx", lambda real: noise(), ["model.onnx", "not a valid ONNX model"]),
    "zip that is not a .pt2": ("model.pt2", lambda real: zip_without_pt2(), ["model.pt2", "not a .pt2 archive"]),
    "garbage .pt2": ("model.pt2", lambda real: noise(), ["model.pt2", "not a .pt2 archive"]),
    "unknown suffix": ("model.tflite", lambda real: b"TFL3" + noise(64),
                       ["unknown artifact type '.tflite'", "directory of a finished `edgecompress run`"]),
    "missing file": ("gone.onnx", None, ["gone.onnx", "not found", "no such file or directory"]),
    "directory that is not a run": ("results", "dir", ["results", "not a finished edgecompress run"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bench_on_a_bad_artifact_is_a_clean_error(case, real_onnx, tmp_path):
    name, content, words = CASES[case]
    target = tmp_path / "user" / "bad" / name
    target.parent.mkdir(parents=True)
    if content == "dir":  # a user's results folder: a metrics.json and an artifacts/ folder, but no run
        (target / "artifacts").mkdir(parents=True)
        (target / "metrics.json").write_text('{"accuracy": 0.9}')
    elif content is not None:
        target.write_bytes(content(real_onnx))
    sentinel = Sentinel(tmp_path / "user")
    expect_clean_error(["bench", target, "--repeats", "1", "--warmup", "0", "--input-shape", "1,8,8"], words)
    sentinel.assert_untouched()


@pytest.mark.parametrize("shape", ["a,b", "0,28", "-1,8,8", "1,,8", ""])
@pytest.mark.parametrize("command", ["bench", "inspect"])
def test_bad_input_shape_is_a_clean_error(command, shape, real_onnx, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(real_onnx)
    target = model if command == "bench" else "mnist_cnn"
    expect_clean_error([command, target, f"--input-shape={shape}"], ["--input-shape", repr(shape), "positive"])


def test_input_shape_error_names_the_expected_and_the_given_shape(tmp_path):
    archive = export(tiny_model(), torch.zeros(1, *SHAPE), tmp_path, ExportSettings(format="pytorch")).path
    expect_clean_error(["inspect", archive, "--input-shape", "3,16,16"],
                       ["does not accept inputs of shape (3, 16, 16)", "(2, 3, 16, 16)", "expects (batch, 1, 8, 8)"])


def test_a_crashing_benchmark_worker_is_a_clean_error(real_onnx, tmp_path, monkeypatch):
    worker = tmp_path / "worker.py"
    worker.write_text("import os\nos.abort()\n")
    monkeypatch.setattr(latency, "WORKER", worker)
    model = tmp_path / "model.onnx"
    model.write_bytes(real_onnx)
    expect_clean_error(["bench", model], ["model.onnx", "benchmark worker failed", "crashed (aborted)"])


CALLABLE_MODULE = """
from torch import nn


def build(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes))
"""


@pytest.mark.slow
def test_bench_run_dir_of_a_callable_model(tmp_path, monkeypatch):
    (tmp_path / "bad_artifacts_callable_model.py").write_text(CALLABLE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = {"name": "callable", "model": {"callable": "bad_artifacts_callable_model:build"},
              "data": {"dataset": "digits"}, "export": {"repeats": 1, "warmup": 0}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    runner, out = CliRunner(), tmp_path / "run"
    res = runner.invoke(app, ["run", str(tmp_path / "recipe.yaml"), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["bench", str(out), "--repeats", "1", "--warmup", "0"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "onnxruntime" in res.output and "executorch" in res.output
