"""The pipeline end to end: measurement after each stage, run-directory safety, resume after a crash."""

from __future__ import annotations

import json

import pytest
import torch

from edgecompress import compress
from edgecompress.errors import EdgeCompressError
from edgecompress.pipeline import Pipeline
from edgecompress.recipe import parse_recipe
from edgecompress.registry import StageConfig, register

CRASH = {"armed": False}


class CrashConfig(StageConfig):
    pass


@register("test.crash_once", CrashConfig)
def crash_once(model, config, ctx):
    """Test-only stage: raises once when armed (a simulated crash), otherwise passes the model through."""
    if CRASH["armed"]:
        CRASH["armed"] = False
        raise RuntimeError("simulated crash")
    return model


def small_recipe(*stages):
    return parse_recipe({
        "name": "small", "seed": 3,
        "model": {"zoo": "mnist_cnn", "kwargs": {"width": 0.5}, "pretrain": {"epochs": 3, "batch_size": 32}},
        "data": {"dataset": "digits"},
        "stages": list(stages),
        "export": {"repeats": 5, "warmup": 1},
    })


PRUNE = {"method": "prune.structured", "ratio": 0.4}
TUNE = {"method": "finetune", "epochs": 2, "lr": 0.02, "distill": {"temperature": 4.0, "alpha": 0.7}}


@pytest.mark.slow
def test_resume_after_crash_matches_uninterrupted(tmp_path, digits_task):
    recipe = small_recipe(PRUNE, {"method": "test.crash_once"}, TUNE)
    CRASH["armed"] = True
    with pytest.raises(RuntimeError, match="simulated crash"):
        Pipeline(recipe, tmp_path / "a", task=digits_task, progress=False, report=False).run()
    state = json.loads((tmp_path / "a" / "state.json").read_text())
    assert state["completed"] == 1  # baseline and prune.structured finished
    resumed = Pipeline(recipe, tmp_path / "a", task=digits_task, resume=True, progress=False, report=False).run()
    straight = Pipeline(recipe, tmp_path / "b", task=digits_task, progress=False, report=False).run()
    assert [h["name"] for h in resumed.history] == ["baseline", "prune.structured", "test.crash_once", "finetune"]
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.history[-1]["metrics"]["accuracy"] == straight.history[-1]["metrics"]["accuracy"]


def test_existing_run_dir_needs_resume_or_force(tmp_path, digits_task):
    recipe = small_recipe(PRUNE)
    Pipeline(recipe, tmp_path / "r", task=digits_task, progress=False, report=False).run()
    before = (tmp_path / "r" / "metrics.json").read_text()
    with pytest.raises(EdgeCompressError, match="already exists"):
        Pipeline(recipe, tmp_path / "r", task=digits_task, progress=False).run()
    assert (tmp_path / "r" / "metrics.json").read_text() == before  # nothing lost
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(EdgeCompressError, match="edgecompress did not create"):
        Pipeline(recipe, tmp_path / "mine", task=digits_task, force=True, progress=False).run()
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_resume_rejects_other_recipe_and_missing_state(tmp_path, digits_task):
    Pipeline(small_recipe(PRUNE), tmp_path / "r", task=digits_task, progress=False, report=False).run()
    with pytest.raises(EdgeCompressError, match="differs"):
        Pipeline(small_recipe(TUNE), tmp_path / "r", task=digits_task, resume=True, progress=False).run()
    with pytest.raises(EdgeCompressError, match="no run to resume"):
        Pipeline(small_recipe(TUNE), tmp_path / "empty", task=digits_task, resume=True, progress=False).run()


@pytest.mark.slow
def test_compress_measures_every_stage_and_keeps_input(tmp_path, digits_task):
    from edgecompress import zoo

    model = zoo.build("mnist_cnn", (1, 8, 8), 10, width=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = compress(model, digits_task, [PRUNE, {"method": "quant.ptq", "calib_samples": 64}],
                      out=tmp_path / "run", progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # user's model untouched
    names = [h["name"] for h in result.history]
    assert names == ["baseline", "prune.structured", "quant.ptq"]
    for h in result.history:
        m = h["metrics"]
        assert m["latency_p50_ms"] > 0 and m["size_bytes"] > 0 and m["macs"] > 0 and "accuracy" in m
    assert result.history[-1]["metrics"]["precision"] == "int8"
    assert result.history[1]["metrics"]["params"] < result.history[0]["metrics"]["params"]
    assert (tmp_path / "run" / "report.html").is_file()
    assert result.export(tmp_path / "ship" / "model.onnx").stat().st_size == result.artifact.size_bytes
