"""The command line: the default recipe end to end (reduced budget), methods, inspect, bench, report, errors."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from edgecompress.cli import app
from edgecompress.recipe import load_recipe

runner = CliRunner()


def reduced_default(tmp_path):
    """The packaged default recipe with a smaller training budget (same stages, data and targets)."""
    data = yaml.safe_load(load_recipe("default").to_yaml())
    data["model"]["pretrain"]["epochs"] = 3
    data["stages"][1]["epochs"] = 2
    data["stages"][2]["calib_samples"] = 128
    data["export"].update(repeats=10, warmup=2)
    path = tmp_path / "default-small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_default_recipe_end_to_end_then_report(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(reduced_default(tmp_path)), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "quant.ptq" in res.output and "report:" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    base, final = metrics["history"][0]["metrics"], metrics["history"][-1]["metrics"]
    assert [h["name"] for h in metrics["history"]] == ["baseline", "prune.structured", "finetune", "quant.ptq"]
    assert final["precision"] == "int8" and (out / "artifacts" / "model_int8.onnx").is_file()
    assert base["accuracy"] > 0.9 and final["accuracy"] > base["accuracy"] - 0.03  # reduced budget: 3-point bar
    assert metrics["summary"]["size_reduction"] >= 8 and metrics["summary"]["macs_reduction"] >= 2
    (out / "report.html").unlink()
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0 and (out / "report.html").is_file()
    res = runner.invoke(app, ["bench", str(out / "artifacts" / "model_int8.onnx"), "--repeats", "5"])
    assert res.exit_code == 0 and "latency_p50_ms" in res.output and "size on disk" in res.output
    assert "None" not in res.output
    res = runner.invoke(app, ["run", str(reduced_default(tmp_path)), "--out", str(out)])
    assert res.exit_code == 2 and "already exists" in res.output  # no silent overwrite


def test_methods_lists_every_stage_with_fields():
    res = runner.invoke(app, ["methods", "--json"])
    assert res.exit_code == 0
    schemas = json.loads(res.output)
    for name in ("prune.structured", "prune.magnitude", "finetune", "distill", "quant.ptq", "quant.dynamic"):
        assert name in schemas
    assert "ratio" in schemas["prune.structured"]["properties"]


def test_inspect_reports_prunability():
    res = runner.invoke(app, ["inspect", "mnist_cnn", "--input-shape", "1,28,28"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "classifier" in res.output and "final classifier" in res.output and "MACs 5,533,184" in res.output


def test_bad_input_exits_2_with_a_clear_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {zoo: mnist_cnn}\nstages:\n  - method: quant.ptqq\n")
    res = runner.invoke(app, ["run", str(bad)])
    assert res.exit_code == 2 and "did you mean 'quant.ptq'" in res.output
    res = runner.invoke(app, ["inspect", "resnet2"])
    assert res.exit_code == 2 and "resnet32" in res.output
    res = runner.invoke(app, ["bench", str(tmp_path / "missing.onnx")])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "metrics.json" in res.output
