"""Recipe validation: errors name the line, the key path, the bad value and what is allowed."""

from __future__ import annotations

import pytest
import yaml

from edgecompress.errors import EdgeCompressError
from edgecompress.recipe import load_recipe, packaged_recipes, parse_recipe


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def error_of(path) -> str:
    with pytest.raises(EdgeCompressError) as info:
        load_recipe(path)
    return str(info.value)


def test_packaged_recipes_validate():
    assert "default" in packaged_recipes()
    for name in packaged_recipes():
        recipe = load_recipe(name)
        assert recipe.stages, name


def test_default_recipe_shape():
    recipe = load_recipe("default")
    assert [s.method for s in recipe.stages] == ["prune.structured", "finetune", "quant.ptq"]
    assert recipe.model.zoo == "mnist_cnn" and recipe.data.dataset == "mnist5k"


def test_malformed_yaml_names_line(tmp_path):
    msg = error_of(write(tmp_path, "name: x\nstages:\n  - method: finetune\n   epochs: 2\n"))
    assert "malformed YAML" in msg and "r.yaml:4" in msg


def test_unknown_method_suggests_closest(tmp_path):
    msg = error_of(write(tmp_path, "model: {zoo: mnist_cnn}\nstages:\n  - method: prune.structural\n"))
    assert "r.yaml:3" in msg and "stages[0].method" in msg and "'prune.structured'" in msg


def test_bad_stage_value_names_path_line_value(tmp_path):
    text = "model: {zoo: mnist_cnn}\nstages:\n  - method: prune.structured\n    ratio: 1.5\n"
    msg = error_of(write(tmp_path, text))
    assert "r.yaml:4" in msg and "stages[0].ratio" in msg and "1.5" in msg


def test_unknown_stage_key_lists_allowed(tmp_path):
    text = "model: {zoo: mnist_cnn}\nstages:\n  - method: finetune\n    epoch: 2\n"
    msg = error_of(write(tmp_path, text))
    assert "r.yaml:4" in msg and "'epoch'" in msg and "did you mean 'epochs'" in msg


def test_unknown_top_level_key_and_literal(tmp_path):
    text = "model: {zoo: mnist_cnn}\nexport:\n  format: tflite\nstagez: []\n"
    msg = error_of(write(tmp_path, text))
    assert "export.format" in msg and "'onnx'" in msg and "r.yaml:3" in msg
    assert "stagez" in msg and "r.yaml:4" in msg


def test_artifact_stage_must_be_last():
    with pytest.raises(EdgeCompressError, match="must be the last stage"):
        parse_recipe({"model": {"zoo": "mnist_cnn"},
                      "stages": [{"method": "quant.ptq"}, {"method": "finetune"}]})


def test_missing_file_lists_packaged(tmp_path):
    msg = error_of(tmp_path / "nope.yaml")
    assert "not found" in msg and "default" in msg


@pytest.mark.parametrize("name", packaged_recipes())
def test_resolved_recipe_round_trips(name):
    """The resolved recipe.yaml of a run loads back to the same recipe, so the run can be resumed."""
    recipe = load_recipe(name)
    text = recipe.to_yaml()
    again = parse_recipe(yaml.safe_load(text))
    assert again.to_yaml() == text and again.fingerprint() == recipe.fingerprint()
    assert again.model_dump(exclude={"stages"}) == recipe.model_dump(exclude={"stages"})
    assert [(s.method, s.name, s.config) for s in again.stages] == [(s.method, s.name, s.config) for s in recipe.stages]


def test_null_that_overrides_a_default_survives_the_round_trip():
    recipe = parse_recipe({"model": {"zoo": "mnist_cnn", "kwargs": {"width": None}},
                           "targets": {"max_accuracy_drop": None, "max_latency_ms": 5.0}})
    again = parse_recipe(yaml.safe_load(recipe.to_yaml()))
    assert again.targets.max_accuracy_drop is None and again.model.kwargs == {"width": None}
    assert again.fingerprint() == recipe.fingerprint()


def test_all_sections_are_reported_together():
    with pytest.raises(EdgeCompressError) as info:
        parse_recipe({"name": "../up", "seed": -1, "model": {"zoo": "mnist_cnn"}, "export": {"format": ["onnx"]},
                      "stages": [{"method": "finetune", "name": "a/b", "epochs": 0}, {"method": "nope"}]})
    msg = str(info.value)
    for path in ("name:", "seed:", "export.format:", "stages[0].name:", "stages[0].epochs:", "stages[1].method:"):
        assert path in msg, (path, msg)
