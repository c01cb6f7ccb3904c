"""Runtimes are registered objects. A runtime defined only in this file (ONNX Runtime under another name, format
and file suffix) is exported to by the export dispatch, found by `bench FILE`'s artifact lookup, runs in this
process and in the benchmark worker, and is measured by `bench`: adding a runtime touches one file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgecompress import runtimes
from edgecompress.cli import app
from edgecompress.errors import EdgeCompressError
from edgecompress.inspection import artifact_from_file
from edgecompress.measure import benchmark
from edgecompress.runtimes import Artifact, Runtime
from edgecompress.runtimes import onnxruntime as ort
from edgecompress.settings import ExportSettings

SHAPE = (3, 8, 8)


def _relabel(art: Artifact) -> Artifact:
    return Artifact(art.path, FAKE.format, FAKE.name, art.precision, art.extra_files)


def _export(model: nn.Module, example: torch.Tensor, out_dir: Path, settings: ExportSettings, name: str) -> Artifact:
    return _relabel(ort.export_onnx(model, example, out_dir / f"{name}.fonnx", settings.opset))


def _validate(path: Path) -> tuple[Artifact, tuple[int, ...]]:
    art, shape = ort.validate(path)
    return _relabel(art), shape


FAKE = Runtime("fakeort", "fakeonnx", "fake ONNX Runtime", (".fonnx",), _export, _validate, ort.runner, ort.bench)


@pytest.fixture
def fake():
    runtimes.register(FAKE)
    yield FAKE
    del runtimes.REGISTRY[FAKE.name]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def test_a_runtime_registered_here_is_exported_found_run_and_benchmarked(fake, tmp_path):
    net, x = model(), torch.randn(2, *SHAPE)
    settings = ExportSettings.model_construct(format="fakeonnx", runtime="fakeort")  # the recipe schema predates it
    art = runtimes.export(net, x, tmp_path, settings)
    assert (art.path.name, art.runtime, art.format) == ("model.fonnx", "fakeort", "fakeonnx")

    found, shape = artifact_from_file(art.path, None)
    assert (found.runtime, found.precision, shape) == ("fakeort", "fp32", SHAPE)
    with torch.no_grad():
        np.testing.assert_allclose(found.runner()(x.numpy()), net(x).numpy(), atol=1e-5)
    timing = benchmark(found, shape, batch=2, warmup=1, repeats=3)
    assert 0 < timing["latency_p50_ms"] <= timing["latency_p95_ms"]

    res = CliRunner().invoke(app, ["bench", str(art.path), "--repeats", "2", "--warmup", "0"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "model.fonnx in fakeort" in res.output and "latency_p50_ms" in res.output


def test_lookup_messages_list_registered_runtimes(fake, tmp_path):
    (tmp_path / "m.tflite").write_bytes(b"TFL3")
    with pytest.raises(EdgeCompressError, match=r"\.fonnx \(fake ONNX Runtime\)"):
        artifact_from_file(tmp_path / "m.tflite", SHAPE)
    damaged = tmp_path / "m.fonnx"
    damaged.write_bytes(b"not onnx")
    with pytest.raises(EdgeCompressError, match="not a valid ONNX model"):
        artifact_from_file(damaged, SHAPE)


def test_built_in_runtimes_and_clashes():
    assert [(r.name, r.format, r.suffixes) for r in runtimes.all_runtimes()] == [
        ("onnxruntime", "onnx", (".onnx",)), ("executorch", "executorch", (".pte",)), ("torch", "pytorch", (".pt2",)),
        ("onnxruntime_exits", "onnx_exits", (".exits",))]
    assert runtimes.for_suffix(".fonnx") is None  # the fixture's registration did not outlive its test
    with pytest.raises(ValueError, match="clashes"):
        runtimes.register(Runtime("other", "other", "other", (".onnx",), _export, _validate, ort.runner, ort.bench))
    with pytest.raises(EdgeCompressError, match="unknown runtime 'tvm'"):
        Artifact(Path("m.so"), "tvm", "tvm").runner()


SHARED_POOL_CHILD = """
import sys
import torch
from edgecompress.runtimes.onnxruntime import export_onnx, session, share_threads
path = export_onnx(torch.nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 8, 8), sys.argv[1]).path
alone = session(path, 2, spin=False).get_session_options()
print(alone.intra_op_num_threads, alone.get_session_config_entry("session.intra_op.allow_spinning"))
share_threads(2)
share_threads(2)
shared = session(path, 2).get_session_options()
print(shared.use_per_session_threads)
try:
    share_threads(1)
except ValueError as err:
    print(err)
"""


def test_sessions_share_one_thread_pool_once_asked(tmp_path):
    """share_threads makes the process's later sessions use one pool (no per-session threads), and a second call
    with another thread count is refused; without a pool, spin=False turns spinning off. In a fresh process:
    ONNX Runtime makes the pool with its environment."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", SHARED_POOL_CHILD, str(tmp_path / "m.onnx")], capture_output=True,
                          text=True, check=True)
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "2 0"
    assert lines[1] == "False"
    assert "already share a pool of 2 threads, not 1" in lines[2]
