"""search.nas: the search space refuses bad spaces with clear errors; a tiny search returns a non-dominated front
and a trained model of the chosen architecture; the latency table ranks networks it has never timed whole."""

from __future__ import annotations

import pytest
import torch

from edgecompress import registry, zoo
from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.recipe import parse_recipe
from edgecompress.measure.latency_model import LatencyTable, measure_models, prediction_error, units
from edgecompress.search.nas import NASConfig, choose, pareto_front
from edgecompress.search.nas_space import SearchSpace
from edgecompress.settings import ExportSettings

STAGE = {"channels": 8, "depth": [1], "width": [1.0], "kernel": [3], "activation": ["relu"], "block": ["conv"]}


def recipe_with(space: dict) -> dict:
    return {"name": "nas", "model": {"zoo": "mnist_cnn"}, "data": {"dataset": "digits"},
            "stages": [{"method": "search.nas", "space": space}]}


@pytest.mark.parametrize("change, words", [
    ({"kernel": []}, ["kernel choices are empty"]),
    ({"kernel": [3, 4]}, ["kernel sizes must be odd"]),
    ({"activation": ["relu", "swishy"]}, ["unknown activation choice", "swishy", "hardswish"]),
    ({"block": ["conv", "transformer"]}, ["unknown block choice", "mbconv"]),
    ({"depth": [1, 1]}, ["repeat a value"]),
    ({"width": [0.5, 0.52]}, ["same", "channel counts"]),
    ({"width": [0.0, 1.0]}, ["width multipliers must be in (0, 8]"]),
    ({}, ["single architecture"]),
    ({"colour": ["red"]}, ["colour"]),
])
def test_bad_search_space_is_named(change, words):
    with pytest.raises(EdgeCompressError) as err:
        parse_recipe(recipe_with({"stages": [{**STAGE, **change}]}))
    text = str(err.value).lower()
    assert "search.nas" in text or "space" in text
    for word in words:
        assert word.lower() in text, text


def test_empty_space_and_too_many_stages():
    with pytest.raises(EdgeCompressError, match="at least 1"):
        parse_recipe(recipe_with({"stages": []}))
    deep = SearchSpace(stages=[{**STAGE, "depth": [1, 2]}] * 5)
    with pytest.raises(EdgeCompressError, match="only 8 pixels wide") as err:
        deep.check_input((1, 8, 8), "search.nas.space")
    assert "at most 4 stages" in str(err.value)


def test_space_from_yaml_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("stages:\n  - {channels: 8, depth: [1, 2], width: [1.0], kernel: [3], activation: [relu], "
                    "block: [conv, dsconv]}\n")
    assert NASConfig(space=str(path)).space.size == 4
    with pytest.raises(ValueError, match="not found"):
        NASConfig(space=str(tmp_path / "missing.yaml"))


def test_pareto_front_and_choice():
    points = [(0.90, 2.0), (0.95, 3.0), (0.89, 2.5), (0.95, 3.5), (0.80, 1.0)]
    assert pareto_front(points) == [0, 1, 4]
    front = [{"val_accuracy": a, "measured_ms": ms} for a, ms in [(0.90, 2.0), (0.95, 3.0), (0.948, 2.8)]]
    assert choose(front, 0.5, None)["measured_ms"] == 2.8  # fastest within 0.5 points of 95%
    assert choose(front, 0.5, 2.5)["val_accuracy"] == 0.90  # most accurate at most 2.5 ms


def test_tiny_search_returns_a_non_dominated_front(digits_task, digits_cnn):
    space = SearchSpace(stages=[
        {"channels": 8, "depth": [1, 2], "width": [0.5, 1.0], "kernel": [3], "activation": ["relu"],
         "block": ["conv", "dsconv"]},
        {"channels": 16, "depth": [1], "width": [0.5, 1.0], "kernel": [3, 5], "activation": ["relu", "hardswish"],
         "block": ["conv"]},
    ])
    config = NASConfig(space=space, trials=6, population=3, epochs=2, max_batches=None, final_epochs=2,
                       calibration_models=3)
    ctx = StageContext(task=digits_task, export=ExportSettings(threads=1), progress=False)
    model = registry.get("search.nas")(digits_cnn, config, ctx)
    info = ctx.info
    scored = [(c["val_accuracy"], c["latency_ms"]) for c in info["candidates"]]
    front = [(m["val_accuracy"], m["latency_ms"]) for m in info["pareto_front"]]
    assert front and set(front) <= set(scored)
    for a, ms in front:  # no candidate is at least as accurate and as fast, and better in one
        assert not any(b >= a and t <= ms and (b, t) != (a, ms) for b, t in scored)
    assert all(m["measured_ms"] > 0 and m["macs_x"] > 0 and m["latency_x"] > 0 for m in info["pareto_front"])
    assert model.__class__.__name__ == "NasCNN"
    arch = getattr(model, "_edgecompress_arch")
    assert arch["kwargs"]["stages"] == info["chosen_stages"]
    with torch.no_grad():
        correct = (model(digits_task.test.tensors[0]).argmax(1) == digits_task.test.tensors[1]).float().mean()
    assert correct > 0.5  # trained: chance is 0.1


def test_latency_table_ranks_unseen_networks():
    """A tiny space: the table (units timed alone) ranks whole networks it never timed in the measured order."""
    shape = (1, 16, 16)

    def net(channels: int, depth: int, block: str = "conv"):
        stages = [{"depth": depth, "channels": c, "kernel": 3, "activation": "relu", "block": block}
                  for c in (channels, 2 * channels)]
        return zoo.build("nas_cnn", shape, 10, stages=stages).eval()

    models = [net(4, 1), net(8, 1, "dsconv"), net(16, 2), net(32, 2), net(48, 3)]
    assert len(units(models[0], shape)) == 6  # block, pool, block, avg-pool, flatten, classifier
    table = LatencyTable(threads=1)
    predicted = [table.raw(m, shape) for m in models]
    measured = measure_models(models, shape, threads=1, rounds=3, repeats=200)  # long bursts: steadier under load
    error = prediction_error(predicted, measured, tolerance=0.5)
    assert error["spearman"] >= 0.8, (predicted, measured)
    assert error["within"] >= 0.6, (predicted, measured)


def test_every_block_type_builds_and_reloads_from_its_checkpoint(tmp_path):
    from edgecompress.baseline import build_from_arch
    from edgecompress.checkpoint import load_model, save_model

    stages = [{"depth": 2, "channels": c, "kernel": k, "activation": a, "block": b}
              for c, k, a, b in [(8, 3, "relu", "conv"), (8, 5, "hardswish", "dsconv"), (16, 3, "silu", "mbconv")]]
    model = zoo.build("nas_cnn", (1, 16, 16), 10, stages=stages).eval()
    assert sum(block.residual for block in model.features if hasattr(block, "residual")) == 1  # mbconv 16 -> 16
    x = torch.randn(2, 1, 16, 16)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path, build_from_arch).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(EdgeCompressError, match="odd positive integer"):
        zoo.build("nas_cnn", (1, 16, 16), 10, stages=[{**stages[0], "kernel": 4}])
