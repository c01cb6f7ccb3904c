"""A model and data that do not fit each other, or data that cannot be learned from, fail before any work
with a clean error naming the problem; a damaged baseline cache is named and retrained."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import yaml

from clean_errors import expect_clean_error
from edgecompress import baseline, validate
from edgecompress.data import data_spec, load_task
from edgecompress.errors import EdgeCompressError
from edgecompress.recipe import parse_recipe
from edgecompress.zoo import build

MODELS = '''
from collections import OrderedDict

import torch
from torch import nn


def _flat(width, outputs):
    return nn.Sequential(OrderedDict(flat=nn.Flatten(), fc=nn.Linear(width, outputs)))


def three_outputs(input_shape):
    return _flat(64, 3)


def for_mnist():
    return _flat(28 * 28, 10)


def nan_weights(num_classes):
    model = _flat(64, num_classes)
    with torch.no_grad():
        model.fc.weight[0, :2] = float("nan")
    return model
'''
PRETRAIN = {"epochs": 1}


def samples(n: int, shape=(1, 8, 8), classes: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, *shape)).astype(np.float32), "y": np.arange(n) % classes}


def with_test(**test) -> dict[str, np.ndarray]:
    clean = samples(20, seed=1)
    return {**samples(40), "x_test": test.get("x_test", clean["x"]), "y_test": test.get("y_test", clean["y"])}


def nan_test_inputs() -> dict[str, np.ndarray]:
    x = samples(20, seed=1)["x"]
    x[[2, 5]] = np.nan
    x[9, 0, 0, 0] = np.inf
    return with_test(x_test=x)


# id: (model section, data section, tensors file content (arrays by name, unnamed, raw bytes) or None, words)
CASES = {
    "output-width": ({"callable": "bad_models:three_outputs"}, {"dataset": "digits"}, None,
                     ["outputs [2, 3]", "10 classes", "10 outputs"]),
    "output-width-pretrain": ({"callable": "bad_models:three_outputs", "pretrain": PRETRAIN},
                              {"dataset": "digits"}, None, ["outputs [2, 3]", "10 classes"]),
    "input-shape-pretrain": ({"callable": "bad_models:for_mnist", "pretrain": PRETRAIN}, {"dataset": "digits"}, None,
                             ["does not accept inputs of shape", "(1, 8, 8)"]),
    "nan-weights": ({"callable": "bad_models:nan_weights"}, {"dataset": "digits"}, None,
                    ["NaN or Inf", "fc.weight (2 of 640 values)"]),
    "nan-weights-pretrain": ({"callable": "bad_models:nan_weights", "pretrain": PRETRAIN}, {"dataset": "digits"},
                             None, ["NaN or Inf", "fc.weight"]),
    "nan-inputs": ({"zoo": "mnist_cnn"}, {}, nan_test_inputs(), ["NaN or Inf", "3 of 20 test samples"]),
    "empty-file": ({"zoo": "mnist_cnn"}, {}, b"", ["empty (0 bytes)"]),
    "no-samples": ({"zoo": "mnist_cnn"}, {}, samples(0), ["x/y: no samples"]),
    "unnamed-arrays": ({"zoo": "mnist_cnn"}, {}, tuple(samples(40).values()),
                       ["missing key(s) ['x']", "arr_0", "np.savez(path, x="]),
    "single-class": ({"zoo": "mnist_cnn", "pretrain": PRETRAIN}, {}, samples(40, classes=1),
                     ["1 class (0)", "at least 2 classes"]),
    "test-split-shape": ({"zoo": "mnist_cnn"}, {}, with_test(x_test=samples(20, shape=(1, 6, 6))["x"]),
                         ["test split's samples have shape [1, 6, 6]", "[1, 8, 8]"]),
    "negative-labels": ({"zoo": "mnist_cnn"}, {}, {**samples(40), "y": np.arange(40) % 3 - 1},
                        ["class indices 0..1", "-1"]),
    "labels-over-num-classes": ({"zoo": "mnist_cnn"}, {"num_classes": 2}, with_test(y_test=np.arange(20) % 4),
                                ["class indices 0..1 (num_classes 2)", "test split has 10 outside", "2, 3"]),
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """tmp_path with the model module importable and the baseline cache inside it."""
    (tmp_path / "bad_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))
    return tmp_path


def write_tensors(path, content: dict | tuple | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, tuple):
        np.savez(path, *content)  # saved as arr_0, arr_1
    else:
        np.savez(path, **content)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_model_or_data_fails_before_any_work(workdir, case):
    model, data, content, words = CASES[case]
    if content is not None:
        write_tensors(workdir / "data.npz", content)
        data = {"dataset": "tensors", "path": str(workdir / "data.npz"), **data}
    recipe = workdir / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": case, "model": model, "data": data,
                                      "stages": [{"method": "finetune", "epochs": 1}]}))
    expect_clean_error(["run", str(recipe), "--out", str(workdir / "run"), "--no-progress"], words)
    assert not list((workdir / "cache").glob("baseline-*")), "nothing may be trained for a bad model or data"


@pytest.mark.parametrize("builder,kwargs,case", [("three_outputs", {"input_shape": (1, 8, 8)}, "output-width"),
                                                  ("for_mnist", {}, "input-shape-pretrain"),
                                                  ("nan_weights", {"num_classes": 10}, "nan-weights")])
def test_check_model_and_task(workdir, digits_task, builder, kwargs, case):
    model = getattr(importlib.import_module("bad_models"), builder)(**kwargs)
    with pytest.raises(EdgeCompressError) as err:
        validate.check_model_and_task(model, digits_task)
    assert all(word in " ".join(str(err.value).split()) for word in CASES[case][3])


def test_synthetic_data_and_a_fitting_model_pass():
    task = load_task(data_spec(dataset="synthetic", input_shape=(3, 16, 16), num_classes=5, samples=40))
    validate.check_model_and_task(build("mnist_cnn", task.input_shape, task.num_classes), task)


@pytest.mark.parametrize("damage", ["model.json", "model.safetensors", "nan-weights"])
def test_damaged_baseline_cache_is_named_and_retrained(workdir, capsys, damage):
    np.savez(workdir / "data.npz", **samples(40))
    recipe = parse_recipe({"model": {"zoo": "mnist_cnn", "pretrain": PRETRAIN},
                           "data": {"dataset": "tensors", "path": str(workdir / "data.npz")}})
    task = load_task(recipe.data)
    trained = baseline.load(recipe, task, progress=False)
    [folder] = (workdir / "cache").glob("baseline-*")
    if damage == "nan-weights":
        from safetensors.torch import save_file

        save_file({k: v * float("nan") if v.is_floating_point() else v for k, v in trained.state_dict().items()},
                  str(folder / "model.safetensors"))
    else:
        (folder / damage).write_bytes(b"\x00garbage")
    capsys.readouterr()
    baseline.load(recipe, task, progress=False)
    assert f"the cached baseline {folder} is damaged" in capsys.readouterr().err
    cached = baseline.load(recipe, task, progress=False)  # the folder now holds the retrained model
    assert f"using cached baseline {folder}" in capsys.readouterr().err
    validate.check_finite_weights(cached)
    assert [folder] == list((workdir / "cache").glob("baseline-*"))
