"""The ``threads`` setting: torch's CPU threads for the compression work (recipe, --threads, compress(threads=))."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from edgecompress import compress, placement, registry, zoo
from edgecompress.cli import app
from edgecompress.errors import EdgeCompressError
from edgecompress.recipe import load_recipe, parse_recipe


def test_recipe_threads_are_checked_saved_and_left_out_of_the_fingerprint():
    recipe = load_recipe("digits-quick")
    assert recipe.threads is None and "threads" not in yaml.safe_load(recipe.to_yaml())
    two = recipe.with_threads(2)
    assert yaml.safe_load(two.to_yaml())["threads"] == 2 and two.fingerprint() == recipe.fingerprint()
    with pytest.raises(EdgeCompressError, match="not a thread count"):
        recipe.with_threads(0)
    with pytest.raises(EdgeCompressError, match=r"threads: Input should be greater than or equal to 1"):
        parse_recipe({"threads": 0})


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8)])
def test_default_is_half_the_usable_cpus(monkeypatch, cpus, expected):
    monkeypatch.setattr(placement.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert placement.default_threads() == expected


def test_cli_threads_option_is_checked():
    res = CliRunner().invoke(app, ["run", "digits-quick", "--threads", "0", "--out", "unused"])
    assert res.exit_code == 2 and "0 is not a thread count" in res.output


def _probe(model, config, ctx):
    """Test-only stage: records torch's thread count while it runs."""
    ctx.info["threads"] = torch.get_num_threads()
    return model


def test_the_run_uses_the_threads_and_restores_the_count(monkeypatch, tmp_path, digits_task):
    monkeypatch.setattr(registry, "_STAGES", {s.name: s for s in registry.all_stages()})
    registry.register("test.threads_probe", registry.StageConfig)(_probe)
    recipe = parse_recipe({"name": "probe", "stages": [{"method": "test.threads_probe"}],
                           "export": {"repeats": 2, "warmup": 0}})
    before = torch.get_num_threads()
    model = zoo.build("mnist_cnn", digits_task.input_shape, digits_task.num_classes, width=0.5)
    result = compress(model, digits_task, recipe, out=tmp_path / "run", progress=False, report=False, threads=2)
    assert result.history[1]["info"]["threads"] == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["threads"] == 2
    assert torch.get_num_threads() == before
