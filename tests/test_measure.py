"""Counts, benchmark, energy and the measure() entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgecompress import runtimes
from edgecompress.tasks import ClassificationTask, Task
from edgecompress.errors import EdgeCompressError
from edgecompress.export import Artifact, export
from edgecompress.measure import (
    benchmark,
    count_macs,
    count_nonzero,
    count_params,
    energy_per_sample,
    layer_table,
    measure,
)
from edgecompress.measure.latency import WORKER
from edgecompress.settings import ExportSettings


class TinyResNet(nn.Module):
    """Conv + BN + ReLU stem, one residual block, global pooling, linear head."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x.mean(dim=(2, 3)))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 4))


def tiny_task(has_labels: bool = True) -> Task:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> TensorDataset:
        return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))

    return ClassificationTask("tiny", split(32), split(16), split(40), (3, 8, 8), 4, has_labels=has_labels)


FAST = ExportSettings(warmup=2, repeats=5)
RAPL_READABLE = os.access("/sys/class/powercap/intel-rapl:0/energy_uj", os.R_OK)  # absent on the CI machines


def test_macs_match_hand_count_conv_and_linear():
    conv = nn.Conv2d(3, 8, 3, padding=1)  # 8x8 output, each output = 3*3*3 MACs
    assert count_macs(conv, torch.randn(4, 3, 8, 8)) == 8 * 8 * 8 * 3 * 3 * 3  # batch 1 only
    assert count_macs(nn.Linear(20, 7), torch.randn(1, 20)) == 20 * 7


def test_params_nonzero_and_mode_restored():
    m = TinyResNet().train()
    bn_stats = m.stem[1].running_mean.clone()
    assert count_params(m) == sum(p.numel() for p in m.parameters())
    dense = count_nonzero(m)  # BatchNorm biases start at zero
    with torch.no_grad():
        m.head.weight.zero_()
    assert count_nonzero(m) == dense - m.head.weight.numel()
    count_macs(m, torch.randn(2, 3, 8, 8))
    assert m.training and torch.equal(m.stem[1].running_mean, bn_stats)


def test_layer_table_rows():
    m = TinyResNet()
    rows = {r["name"]: r for r in layer_table(m, torch.randn(1, 3, 8, 8))}
    assert list(rows) == ["stem.0", "stem.1", "block.0", "block.1", "head"]
    assert rows["stem.0"] == {"name": "stem.0", "type": "Conv2d", "in_channels": 3, "out_channels": 8, "kernel": [3, 3], "groups": 1,
                              "params": 8 * 27 + 8, "nonzero": 8 * 27 + 8, "macs": 64 * 8 * 27}
    assert rows["block.0"]["groups"] == 2 and rows["block.0"]["macs"] == 64 * 8 * 4 * 9
    assert rows["stem.1"]["type"] == "BatchNorm2d" and rows["stem.1"]["out_channels"] == 8
    assert rows["stem.1"]["macs"] == 0
    head = rows["head"]
    assert (head["in_features"], head["out_features"], head["kernel"], head["macs"]) == (8, 4, None, 32)
    assert sum(r["macs"] for r in rows.values()) == count_macs(m, torch.randn(1, 3, 8, 8))
    json.dumps(list(rows.values()))


@pytest.mark.parametrize("fmt,runtime", [("onnx", "onnxruntime"),
                                         pytest.param("pytorch", "torch", marks=pytest.mark.slow)])  # torch worker: ~8 s
def test_benchmark(tmp_path, fmt, runtime):
    art = export(TinyResNet().eval(), torch.randn(1, 3, 8, 8), tmp_path, ExportSettings(format=fmt, runtime=runtime))
    r = benchmark(art, (3, 8, 8), batch=2, warmup=2, repeats=5)
    assert 0 < r["latency_p50_ms"] <= r["latency_p95_ms"]
    assert r["throughput_sps"] == pytest.approx(2 / (r["latency_mean_ms"] / 1e3))
    assert r["peak_memory_mb"] > 0


def test_onnx_worker_does_not_import_torch(tmp_path):
    art = export(mlp().eval(), torch.randn(1, 3, 8, 8), tmp_path, FAST)
    entry = runtimes.get("onnxruntime").bench_entry
    code = (f"import runpy, sys; w = runpy.run_path({str(WORKER)!r}); "
            f"w['load_entry']({entry!r})({str(art.path)!r}, 1)(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_benchmark_errors(tmp_path):
    with pytest.raises(EdgeCompressError, match="not found"):
        benchmark(Artifact(tmp_path / "gone.onnx", "onnx", "onnxruntime"), (3, 8, 8))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(EdgeCompressError, match="worker failed") as err:
        benchmark(Artifact(bad, "onnx", "onnxruntime"), (3, 8, 8))
    assert "bad.onnx" in str(err.value)


def test_energy_estimate():
    fp32 = energy_per_sample(1_000_000, 4_000, "fp32")
    assert fp32["energy_source"] == "estimate (Horowitz 2014 45nm op-energy table)"
    assert fp32["energy_mj"] == pytest.approx((1e6 * 4.6 + 4_000 * 160) * 1e-9)
    assert energy_per_sample(1_000_000, 1_000, "int8")["energy_mj"] < fp32["energy_mj"]
    assert energy_per_sample(1, 1, measured_mj=2.5) == {"energy_mj": 2.5, "energy_source": "measured (RAPL)"}
    with pytest.raises(EdgeCompressError, match="precision"):
        energy_per_sample(1, 1, "int3")


def test_measure_all_keys(tmp_path):
    model, task = mlp().eval(), tiny_task()
    art = export(model, task.example_inputs(1), tmp_path, FAST)
    m = measure(model, art, task, FAST)
    keys = {"accuracy", "f1_macro", "params", "nonzero_params", "macs", "size_bytes", "latency_p50_ms",
            "latency_p95_ms", "latency_mean_ms", "throughput_sps", "peak_memory_mb", "energy_mj", "energy_source",
            "precision", "runtime", "format", "threads", "batch"}
    assert set(m) == keys
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["f1_macro"] <= 1
    assert m["macs"] == 192 * 16 + 16 * 4 and m["params"] == m["nonzero_params"] == count_params(model)
    assert m["size_bytes"] == art.path.stat().st_size
    assert m["energy_source"].startswith("measured" if RAPL_READABLE else "estimate")
    json.dumps(m)


def test_measure_without_labels_or_latency(tmp_path):
    model, task = mlp().eval(), tiny_task(has_labels=False)
    art = export(model, task.example_inputs(1), tmp_path, FAST)
    m = measure(model, art, task, FAST, skip_latency=True)
    assert "accuracy" not in m and "latency_p50_ms" not in m
    assert m["macs"] > 0 and m["energy_mj"] > 0
