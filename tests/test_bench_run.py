"""``bench RUN_DIR`` measures the run's own final artifact first; re-exports for comparison are labelled as such."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgecompress.pipeline import Pipeline
from edgecompress.recipe import parse_recipe
from edgecompress.runcompare import compare_run
from edgecompress.settings import ExportSettings


@pytest.mark.slow
def test_bench_run_dir_measures_the_runs_own_artifact(tmp_path, digits_task):
    recipe = parse_recipe({
        "name": "bench-own", "model": {"zoo": "mnist_cnn", "kwargs": {"width": 0.5}, "pretrain": {"epochs": 2}},
        "data": {"dataset": "digits"},
        "stages": [{"method": "quant.ptq", "calib_samples": 64, "equalize": True, "bias_correction": True}],
        "export": {"repeats": 3, "warmup": 1},
    })
    Pipeline(recipe, tmp_path / "run", task=digits_task, progress=False, report=False).run()
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"][-1]["metrics"]
    rows = compare_run(tmp_path / "run", ExportSettings(repeats=3, warmup=1))
    own, *others = rows
    assert own["source"] == "the run's artifact" and own["precision"] == "int8"
    assert own["accuracy"] == final["accuracy"] and own["size_bytes"] == final["size_bytes"]  # the same file
    assert others and all(row["source"].startswith("re-export") for row in others)
    assert {row["runtime"] for row in others} >= {"onnxruntime", "executorch"}
    script = Path(sys.executable).with_name("edgecompress")  # the installed command, as a user runs it
    cli = subprocess.run([str(script), "bench", str(tmp_path / "run"), "--repeats", "2"], capture_output=True, text=True)
    assert cli.returncode == 0 and "the run's artifact" in cli.stdout, cli.stderr
    assert not [n for n in ("Failed to load", "cpuinfo_utils", "is an Enum subclass") if n in cli.stderr], cli.stderr


ROWS = [
    {"source": "the run's artifact", "runtime": "onnxruntime", "precision": "int8", "accuracy": 0.9689,
     "size_bytes": 29142, "latency_p50_ms": 0.152, "latency_p95_ms": 0.2, "throughput_sps": 6543.2},
    {"source": "re-export (default quant.ptq)", "runtime": "executorch", "precision": "int8", "accuracy": 0.966,
     "size_bytes": 25000, "latency_p50_ms": 0.252, "latency_p95_ms": 0.3, "throughput_sps": 3943.2,
     "xnnpack_nodes": 3, "portable_ops": {"aten.view_copy": 2}},
]


def _rendered(width: int, wide: bool) -> str:
    import io

    from rich.console import Console

    from edgecompress.cli import bench_table

    console = Console(record=True, width=width, file=io.StringIO())
    console.print(bench_table(ROWS, "final model of runs/x (1 thread, batch 1)", wide))
    return console.export_text()


def test_bench_table_fits_80_columns_and_wide_adds_the_rest():
    text = _rendered(80, wide=False)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "96.89" in text and "96.60" in text and "6,543" in text and "(1 thread," in text
    assert "p95" not in text and "portable" not in text
    wide = _rendered(140, wide=True)
    assert "…" not in wide and "aten.view_copy x2" in wide and "0.300" in wide
