"""``bench RUN_DIR`` measures the run's own final artifact first; re-exports for comparison are labelled as such."""

from __future__ import annotations

import json

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
