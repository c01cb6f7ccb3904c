"""Tests of the run report: terminal tables, plots and the self-contained HTML report."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from edgecompress.errors import EdgeCompressError
from edgecompress.report import build_report, checks_table, stage_table
from edgecompress.report.plots import make_plots

ENERGY_SOURCE = "estimate (Horowitz 2014 45nm op-energy table)"


def _layers(channels: dict[str, int], sparsity: float = 0.0) -> list[dict]:
    """Per-layer records of a small CNN whose layers have the given output channels (absent: removed)."""
    shapes = {"features.0": ("Conv2d", 1, 9), "features.3": ("Conv2d", None, 9), "features.6": ("Conv2d", None, 9),
              "classifier.1": ("Linear", None, 49), "classifier.3": ("Linear", None, 1)}
    layers, previous = [], 1
    for name, out in channels.items():
        kind, fixed_in, k = shapes[name]
        cin = fixed_in or previous * (k if kind == "Linear" else 1)
        params = cin * out * (1 if kind == "Linear" else k) + out
        key = "out_features" if kind == "Linear" else "out_channels"
        layers.append({"name": name, "type": kind, "in_channels": cin, key: out, "params": params,
                       "nonzero": round(params * (1 - sparsity)), "macs": params * (196 if kind == "Conv2d" else 1)})
        previous = out
    return layers


def _stage(index: int, name: str, accuracy: float, size: int, macs: int, latency: float, layers: list[dict],
           info: dict, precision: str = "fp32") -> dict:
    params = sum(layer["params"] for layer in layers)
    return {
        "index": index, "name": name, "method": name,
        "metrics": {"accuracy": accuracy, "f1_macro": accuracy - 0.002, "params": params,
                    "nonzero_params": sum(layer["nonzero"] for layer in layers), "macs": macs, "size_bytes": size,
                    "latency_p50_ms": latency, "latency_p95_ms": latency * 1.25, "throughput_sps": 1000 / latency,
                    "peak_memory_mb": 3.2, "energy_mj": 0.06 * macs / 11e6, "energy_source": ENERGY_SOURCE,
                    "precision": precision, "runtime": "onnxruntime", "format": "onnx", "threads": 1, "batch": 1,
                    "stage_seconds": 12.3 + index},
        "layers": layers, "info": info,
    }


def sample_metrics() -> dict:
    """A realistic four-stage metrics.json (baseline, structured pruning, fine-tuning, INT8 PTQ)."""
    dense = {"features.0": 16, "features.3": 32, "features.6": 32, "classifier.1": 64, "classifier.3": 10}
    pruned = {"features.0": 8, "features.3": 16, "classifier.1": 32, "classifier.3": 10}
    return {
        "recipe": "default", "created": "2026-11-22T10:00:00", "seed": 0, "model": "mnist_cnn", "dataset": "mnist5k",
        "export": {"format": "onnx", "runtime": "onnxruntime", "threads": 1, "batch": 1},
        "targets": {"max_accuracy_drop": 1.0, "min_size_reduction": 10.0, "min_macs_reduction": 2.0},
        "history": [
            _stage(0, "baseline", 0.981, 395000, 11_000_000, 0.41, _layers(dense), {}),
            _stage(1, "prune.structured", 0.952, 101000, 3_050_000, 0.33, _layers(pruned),
                   {"achieved_ratio": 0.5, "importance": "l2", "steps": [{"step": 1, "ratio": 0.25, "params": 51234},
                                                                        {"step": 2, "ratio": 0.5, "params": 25001}],
                    "removed_layers": ["features.6"], "per_layer": {"features.0": {"kept": 8, "of": 16}}}),
            _stage(2, "finetune", 0.978, 101000, 3_050_000, 0.33, _layers(pruned),
                   {"epochs": 3, "loss": [0.41, 0.22, 0.17], "lr": 0.001}),
            _stage(3, "quant.ptq", 0.977, 27800, 3_050_000, 0.31, _layers(pruned, sparsity=0.12),
                   {"calibration_samples": 256, "scheme": {"weights": "int8 per-channel", "activations": "uint8"}},
                   precision="int8"),
        ],
        "summary": {"size_reduction": 14.2, "macs_reduction": 3.6, "accuracy_drop_points": 0.4,
                    "latency_speedup": 1.3, "total_seconds": 95.0},
        "checks": [{"target": "max_accuracy_drop", "wanted": 1.0, "got": 0.4, "passed": True},
                   {"target": "min_size_reduction", "wanted": 10.0, "got": 14.2, "passed": True},
                   {"target": "min_macs_reduction", "wanted": 4.0, "got": 3.6, "passed": False}],
    }


def _run_dir(tmp_path: Path, metrics: dict) -> Path:
    (tmp_path / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return tmp_path


def _console_text(renderable) -> str:
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_report_contains_stages_numbers_and_inline_images(tmp_path):
    path = build_report(_run_dir(tmp_path, sample_metrics()))
    assert path == tmp_path / "report.html"
    html = path.read_text(encoding="utf-8")
    for text in ("baseline", "prune.structured", "finetune", "quant.ptq", "mnist_cnn", "onnxruntime",
                 "14.2", "98.10", "385.7 KiB", "11.0M", "FAIL", ENERGY_SOURCE, "achieved_ratio"):
        assert text in html, text
    assert html.count("data:image/png;base64,") >= 4
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", html)
    assert "<script" not in html and "@import" not in html
    assert not list(tmp_path.glob(".report.*")), "temporary file left behind"


def test_report_with_missing_keys_and_single_stage(tmp_path):
    metrics = sample_metrics()
    metrics = {"model": "tiny", "history": [metrics["history"][0]]}
    for key in ("accuracy", "f1_macro", "energy_mj", "energy_source", "latency_p95_ms"):
        del metrics["history"][0]["metrics"][key]
    del metrics["history"][0]["info"]
    html = build_report(_run_dir(tmp_path, metrics)).read_text(encoding="utf-8")
    assert "tiny" in html and "baseline" in html and "—" in html
    assert "has not finished" in html and "not measured in this run" in html


@pytest.mark.parametrize("metrics", [
    {"history": sample_metrics()["history"][:1]},
    {"history": [{"name": "baseline"}], "summary": None, "checks": "oops", "export": []},
    {"history": [{"name": "weird", "metrics": {"accuracy": "n/a", "size_bytes": None, "macs": True},
                  "layers": [{"name": "x", "type": "Conv2d"}], "info": {"nested": [[1, 2], {"a": None}], "e": []}}]},
])
def test_report_survives_sparse_or_odd_metrics(tmp_path, metrics):
    assert build_report(_run_dir(tmp_path, metrics)).is_file()


def test_plots_cover_all_five_figures():
    assert [p.title for p in make_plots(sample_metrics())] == [
        "Accuracy vs size", "Accuracy vs latency", "Per-stage bars", "Kept channels", "Sparsity"]


def test_synthetic_run_without_accuracy_skips_accuracy_plots():
    metrics = copy.deepcopy(sample_metrics())
    for entry in metrics["history"]:
        del entry["metrics"]["accuracy"]
    titles = [p.title for p in make_plots(metrics)]
    assert "Accuracy vs size" not in titles and "Per-stage bars" in titles


def test_missing_metrics_json_names_path_and_fix(tmp_path):
    with pytest.raises(EdgeCompressError) as err:
        build_report(tmp_path)
    assert str(tmp_path / "metrics.json") in str(err.value)
    assert "edgecompress run" in str(err.value)


def test_corrupt_metrics_json_names_file(tmp_path):
    (tmp_path / "metrics.json").write_text('{"history": [', encoding="utf-8")
    with pytest.raises(EdgeCompressError, match="not valid JSON") as err:
        build_report(tmp_path)
    assert str(tmp_path / "metrics.json") in str(err.value)
    assert not (tmp_path / "report.html").exists()


def test_wide_stage_table_renders_in_120_columns():
    text = _console_text(stage_table(sample_metrics(), wide=True))
    for name in ("baseline", "prune.structured", "finetune", "quant.ptq", "11.0M", "14.2×", "p95", "Energy"):
        assert name in text, name
    assert max(len(line) for line in text.splitlines()) <= 120 and "…" not in text
    assert "—" in _console_text(stage_table({"history": [{"name": "baseline"}]}))


def _text_at(width: int, renderable) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_default_stage_table_fits_80_columns_without_cutting_cells():
    metrics = sample_metrics()
    metrics["history"][2]["name"] = "finetune-with-a-long-stage-name"
    text = _text_at(80, stage_table(metrics))
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for accuracy in ("98.10", "95.20", "97.80", "97.70"):
        assert accuracy in text
    for cell in ("385.7 KiB", "27.1 KiB", "11.0M", "14.2×", "0.410", "23.5k"):  # 23.5k: INT8 zeros, so Non-zero shows
        assert cell in text, cell
    assert "finetune-with-a-long-stage-name" in "".join(line.split(" ")[0] for line in text.splitlines())  # folded
    assert "p95" not in text and "Energy" not in text  # left to --wide


def test_default_stage_table_leaves_out_non_zero_when_nothing_was_zeroed():
    metrics = sample_metrics()
    for entry in metrics["history"]:
        entry["metrics"]["nonzero_params"] = entry["metrics"]["params"]
    assert "Non-" not in _text_at(80, stage_table(metrics))
    assert "Non-" in _text_at(120, stage_table(metrics, wide=True))


def test_report_command_prints_wide_tables_on_request(tmp_path):
    from typer.testing import CliRunner

    from edgecompress.cli import app

    _run_dir(tmp_path, sample_metrics())
    narrow = CliRunner().invoke(app, ["report", str(tmp_path)])
    wide = CliRunner().invoke(app, ["report", str(tmp_path), "--wide"])
    assert narrow.exit_code == 0 and wide.exit_code == 0
    assert "p95" not in narrow.output and "98.10" in narrow.output and "…" not in narrow.output
    assert "p95" in wide.output and "98.10" in wide.output and "…" not in wide.output


def test_checks_table_shows_pass_and_fail():
    text = _console_text(checks_table(sample_metrics()))
    assert "PASS" in text and "FAIL" in text and "max accuracy drop" in text


def _html(tmp_path: Path, metrics: dict) -> str:
    return build_report(_run_dir(tmp_path, metrics)).read_text(encoding="utf-8")


def test_verdict_counts_targets_in_words():
    from edgecompress.report.html import verdict

    passed, failed = {"passed": True}, {"passed": False}
    assert verdict([passed]) == "The target was met" and verdict([failed]) == "The target was missed"
    assert verdict([passed] * 3) == "All 3 targets met" and verdict([passed, failed, passed]) == "1 of 3 targets missed"


def test_report_says_one_thread_and_the_compression_threads(tmp_path):
    html = _html(tmp_path, {**sample_metrics(), "threads": 2})
    assert "1 thread," in html and "1 threads" not in html and "thread(s)" not in html
    assert "compression used <b>2 threads</b>" in html and "latency measured with <b>1 thread</b>" in html
    assert "All 1 targets" not in _html(tmp_path, {**sample_metrics(), "checks": sample_metrics()["checks"][:1]})


def test_compression_time_leaves_out_the_baseline(tmp_path):
    html = _html(tmp_path, sample_metrics())  # stage_seconds 12.3 (baseline), 13.3, 14.3, 15.3
    assert "42.9 s" in html and "baseline, not included: 12.3 s" in html


def test_structured_only_run_has_a_sentence_instead_of_an_empty_sparsity_panel(tmp_path):
    assert "Sparsity" in [p.title for p in make_plots(sample_metrics())]  # the final model has 12% zeros
    dense = copy.deepcopy(sample_metrics())
    for layer in dense["history"][-1]["layers"]:
        layer["nonzero"] = layer["params"]
    assert "Sparsity" not in [p.title for p in make_plots(dense)]
    assert "No per-layer sparsity panel" in _html(tmp_path, dense)
    assert "No per-layer sparsity panel" not in _html(tmp_path, sample_metrics())


def test_report_and_checkpoint_files_are_0644_like_the_others(tmp_path):
    import os

    import torch

    from edgecompress.checkpoint import save_model

    previous = os.umask(0o022)
    try:
        report = build_report(_run_dir(tmp_path, sample_metrics()))
        save_model(torch.nn.Linear(2, 2), tmp_path / "ckpt")
    finally:
        os.umask(previous)
    for path in (report, tmp_path / "ckpt" / "model.safetensors", tmp_path / "ckpt" / "model.json"):
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path
