"""Export to ONNX and torch.export archives, and run them in their runtimes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.export import Artifact, export
from edgecompress.settings import ExportSettings


class TinyResNet(nn.Module):
    """Conv + BN + ReLU stem, one residual block, global pooling, linear head."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x.mean(dim=(2, 3)))


class FixedBatch(nn.Module):
    """Hard-codes a batch of one in a view, so torch.export cannot make the batch dynamic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(1, 6) * 2


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = TinyResNet()
    m(torch.randn(16, 3, 8, 8))  # non-trivial BN running stats
    return m.eval()


def _max_diff(model: nn.Module, artifact: Artifact, batch: int) -> float:
    x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    return float(np.abs(artifact.runner(threads=1)(x) - expected).max())


@pytest.mark.parametrize("fmt,runtime,suffix", [("onnx", "onnxruntime", ".onnx"), ("pytorch", "torch", ".pt2")])
def test_export_matches_pytorch_dynamic_batch(model, tmp_path, fmt, runtime, suffix):
    settings = ExportSettings(format=fmt, runtime=runtime)
    art = export(model, torch.randn(1, 3, 8, 8), tmp_path, settings, name="tiny")
    assert art.path == tmp_path / f"tiny{suffix}" and art.runtime == runtime and art.size_bytes > 0
    assert not list(tmp_path.glob("*tmp*"))  # atomic write leaves no temporary file
    threads = torch.get_num_threads()
    for batch in (1, 4):
        assert _max_diff(model, art, batch) < 1e-4
    assert torch.get_num_threads() == threads  # the torch runner restores the process-wide setting


def test_export_leaves_model_mode_alone(tmp_path):
    m = TinyResNet().train()
    export(m, torch.randn(1, 3, 8, 8), tmp_path, ExportSettings(format="pytorch", runtime="torch"))
    assert m.training


def test_pytorch_export_falls_back_to_static_batch(tmp_path):
    x = torch.randn(1, 6)
    with pytest.warns(UserWarning, match="static batch"):
        art = export(FixedBatch(), x, tmp_path, ExportSettings(format="pytorch", runtime="torch"))
    np.testing.assert_allclose(art.runner()(x.numpy()), x.numpy() * 2)


@pytest.mark.parametrize("fmt,runtime", [("onnx", "torch"), ("pytorch", "onnxruntime")])
def test_runtime_format_mismatch(model, tmp_path, fmt, runtime):
    with pytest.raises(EdgeCompressError, match="cannot run") as err:
        export(model, torch.randn(1, 3, 8, 8), tmp_path, ExportSettings(format=fmt, runtime=runtime))
    assert err.value.where == "export.runtime"


@pytest.mark.parametrize("fmt,runtime,name", [("onnx", "onnxruntime", "m.onnx"), ("pytorch", "torch", "m.pt2")])
def test_missing_and_corrupt_files(tmp_path, fmt, runtime, name):
    path = tmp_path / name
    art = Artifact(path, fmt, runtime)
    with pytest.raises(EdgeCompressError, match="not found") as err:
        art.runner()
    assert name in str(err.value)
    path.write_bytes(b"not a model")
    with pytest.raises(EdgeCompressError, match="cannot load") as err:
        art.runner()
    assert name in str(err.value)
