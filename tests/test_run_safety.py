"""Run-directory safety: --force never deletes a user's files, nothing is written outside the run, one process
per run, filesystem faults and damaged resume files give clean errors, and a crashed run still resumes."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch
import yaml
from clean_errors import Sentinel, expect_clean_error, snapshot

from edgecompress import checkpoint, rundir
from edgecompress.errors import EdgeCompressError
from edgecompress.pipeline import Pipeline
from edgecompress.recipe import parse_recipe

RECIPE = {
    "name": "safety", "seed": 1,
    "model": {"zoo": "mnist_cnn", "kwargs": {"width": 0.5}, "pretrain": {"epochs": 1, "batch_size": 32}},
    "data": {"dataset": "digits"},
    "stages": [{"method": "prune.structured", "ratio": 0.3}],
    "export": {"repeats": 3, "warmup": 1},
}


def run(out, *, recipe=None, **kwargs):
    return Pipeline(parse_recipe(recipe or RECIPE), out, progress=False, report=False, **kwargs).run()


def recipe_file(tmp_path, **changes):
    path = tmp_path / "recipe-in.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, **changes}))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished run, copied by tests that damage or replace it."""
    out = tmp_path_factory.mktemp("runs") / "done"
    run(out)
    return out


def copy_run(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run")


def test_force_refuses_a_user_directory_with_a_recipe_yaml(tmp_path):
    user = Sentinel(tmp_path / "project")  # holds recipe.yaml, a .git folder and other files
    expect_clean_error(["run", recipe_file(tmp_path), "--out", user.root, "--force", "--no-progress"],
                       ["edgecompress did not create", "--force only replaces"])
    user.assert_untouched()


def test_force_keeps_the_old_run_when_the_new_one_fails_before_its_baseline(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    before = snapshot(out)
    bad = recipe_file(tmp_path, model={"callable": "no_such_module_xyz:build"})
    expect_clean_error(["run", bad, "--out", out, "--force", "--no-progress"], ["no_such_module_xyz"])
    assert snapshot(out) == before  # the old run is intact
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".edgecompress")] == []


def test_force_replaces_an_old_run_only_after_the_new_baseline(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    old_id = rundir.run_id(out)
    result = run(out, force=True)
    assert rundir.run_id(out) not in (None, old_id)
    assert result.history[-1]["name"] == "prune.structured"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the old run moved aside was removed


def test_a_run_without_the_marker_is_not_replaced(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    (out / rundir.MARKER).unlink()  # state.json and recipe.yaml alone do not make a run directory
    with pytest.raises(EdgeCompressError, match="did not create"):
        run(out, force=True)
    assert (out / "metrics.json").is_file()


def test_a_run_that_fails_before_its_baseline_needs_no_force_on_retry(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(EdgeCompressError):
        run(out, recipe={**RECIPE, "model": {"callable": "no_such_module_xyz:build"}})
    assert not out.exists()  # nothing left behind
    out.mkdir()
    rundir.write_json(out / rundir.MARKER, {"tool": "edgecompress", "run_id": "x"})  # as after a kill -9
    rundir.write_json(out / rundir.STATE, {"fingerprint": "f", "completed": -1})
    assert run(out).history[0]["name"] == "baseline"


@pytest.mark.parametrize("name", ["../../../../escape", "a/b", "", "..", "x\x00y", "/abs"])
def test_stage_names_cannot_leave_the_run_directory(tmp_path, name):
    user = Sentinel(tmp_path / "user")
    stages = [{"method": "prune.structured", "ratio": 0.3, "name": name}]
    expect_clean_error(["run", recipe_file(tmp_path, stages=stages), "--out", user.root / "run", "--no-progress"],
                       ["stages[0].name"])
    user.assert_untouched()
    assert not (user.root / "run").exists()


def test_every_written_path_is_checked(tmp_path):
    with pytest.raises(EdgeCompressError, match="outside the run directory"):
        rundir.stage_dir(tmp_path, 1, "../../../../x")
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(EdgeCompressError, match="outside the run directory"):
        rundir.child(tmp_path, "link", "model.onnx")


def test_a_live_run_is_locked(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    with rundir.Workspace(out, resume=True):  # the original run, still going
        with pytest.raises(EdgeCompressError, match=r"in use by another edgecompress process \(PID \d+\)"):
            run(out, resume=True)
        with pytest.raises(EdgeCompressError, match="in use"):
            run(out, force=True)
    assert run(out, resume=True).history[-1]["name"] == "prune.structured"  # free once the holder is done


def test_out_that_is_a_file_or_a_symlink(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("mine")
    expect_clean_error(["run", recipe_file(tmp_path), "--out", target, "--no-progress"], ["is a file"])
    assert target.read_text() == "mine"
    user = Sentinel(tmp_path / "user")
    (tmp_path / "link").symlink_to(user.root)
    expect_clean_error(["run", recipe_file(tmp_path), "--out", tmp_path / "link", "--force", "--no-progress"],
                       ["symbolic link"])
    user.assert_untouched()


@pytest.mark.slow  # three whole runs per case: failed, resumed, uninterrupted
@pytest.mark.parametrize("code, words", [(errno.ENOSPC, ["No space left", "free disk space", "--resume"]),
                                         (errno.EROFS, ["Read-only", "another --out"]),
                                         (errno.EACCES, ["Permission denied", "writable"])])
def test_filesystem_faults_are_clean_errors_and_the_run_resumes(tmp_path, monkeypatch, code, words):
    """The fault is injected where stage 1 saves its checkpoint (root ignores permissions, so a real read-only
    directory cannot be made in a test)."""
    out = tmp_path / "run"
    real = checkpoint.save_file

    def failing_save(state, path):
        if "01-prune.structured" in path:  # stage 1 saves its checkpoint: the disk fails
            raise OSError(code, os.strerror(code), path)
        real(state, path)

    monkeypatch.setattr(checkpoint, "save_file", failing_save)
    with pytest.raises(EdgeCompressError) as err:
        run(out)
    text = str(err.value)
    assert all(w in text for w in words), text
    monkeypatch.setattr(checkpoint, "save_file", real)
    resumed = run(out, resume=True)
    straight = run(tmp_path / "straight")
    assert resumed.history[-1]["metrics"]["params"] == straight.history[-1]["metrics"]["params"]
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(a, b)


def damage_state(out):
    (out / "state.json").write_text("{}")


def damage_state_index(out):
    (out / "state.json").write_text(json.dumps({**json.loads((out / "state.json").read_text()), "completed": "x"}))


def damage_model_json(out):
    meta = out / "stages" / "01-prune.structured" / "model.json"
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "modules"}))


def damage_weights_shape(out):
    shutil.copy(out / "stages" / "00-baseline" / "model.safetensors", out / "stages" / "01-prune.structured")


def damage_history(out):
    (out / "metrics.json").write_text(json.dumps({"history": []}))


@pytest.mark.parametrize("damage, words", [
    (damage_state, ["state.json", "missing fingerprint, completed"]),
    (damage_state_index, ["state.json", "not a stage index"]),
    (damage_model_json, ["model.json", "modules"]),
    (damage_weights_shape, ["model.safetensors", "shape"]),
    (damage_history, ["metrics.json", "finished stage"]),
])
def test_damaged_resume_files_are_named(finished_run, tmp_path, damage, words):
    out = copy_run(finished_run, tmp_path)
    damage(out)
    expect_clean_error(["run", "--resume", out, "--no-progress"], words)


def test_report_refuses_garbage_metrics(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    (out / "metrics.json").write_text(json.dumps({"what": "ever"}))
    expect_clean_error(["report", out], ["metrics.json", "no stage history"])
    assert not (out / "report.html").exists()


def test_portfolio_level_with_corrupt_json(tmp_path):
    level = tmp_path / "p" / "level_1"
    level.mkdir(parents=True)
    (level / "model.json").write_text("{not json")
    expect_clean_error(["portfolio", tmp_path / "p"], ["corrupt JSON", "model.json"])
