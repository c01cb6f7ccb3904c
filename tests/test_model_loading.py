"""Model loading: every spec kind, safe defaults for pickles, clear errors for bad specs, weights and shapes."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from edgecompress import zoo
from edgecompress.errors import EdgeCompressError
from edgecompress.zoo.loading import ModelSpec, check_input, load_model

SHAPE, CLASSES = (1, 8, 8), 10


@pytest.fixture
def reference():
    torch.manual_seed(0)
    return zoo.build("mnist_cnn", SHAPE, CLASSES, width=0.5).eval()


def same_outputs(reference: torch.nn.Module, loaded: torch.nn.Module) -> bool:
    """Equal outputs in eval mode (a torch.export module keeps the mode it was exported in)."""
    if not isinstance(loaded, torch.fx.GraphModule):
        loaded.eval()
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        return torch.allclose(reference.eval()(x), loaded(x), atol=1e-6)


def test_zoo_spec():
    model = load_model(ModelSpec(zoo="resnet20", kwargs={"width": 0.5}), (3, 32, 32), 7)
    assert model._edgecompress_arch["kwargs"] == {"width": 0.5}
    check_input(model, (3, 32, 32), num_classes=7)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights(tmp_path, reference, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(reference.state_dict(), str(path))
    else:
        torch.save(reference.state_dict(), path)
    model = load_model(ModelSpec(zoo="mnist_cnn", kwargs={"width": 0.5}, weights=path), SHAPE, CLASSES)
    assert same_outputs(reference, model)


def test_callable_gets_only_the_arguments_it_names(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "def make(num_classes, hidden=4):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model(ModelSpec(callable="my_models:make", kwargs={"hidden": 5}), SHAPE, 3)
    assert model[1].out_features == 5 and model[3].out_features == 3
    model = load_model(ModelSpec(callable="edgecompress.zoo.cnn:mnist_cnn"), SHAPE, CLASSES)
    check_input(model, SHAPE, CLASSES)


def test_archive(tmp_path, reference):
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(reference, (torch.randn(2, *SHAPE),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "m.pt2")
    model = load_model(ModelSpec(archive=tmp_path / "m.pt2"), SHAPE, CLASSES)
    check_input(model, SHAPE, CLASSES)
    assert same_outputs(reference, model)


def test_archive_with_fixed_batch_is_reported(tmp_path, reference):
    torch.export.save(torch.export.export(reference, (torch.randn(1, *SHAPE),)), tmp_path / "m.pt2")
    with pytest.raises(EdgeCompressError, match="dynamic batch dimension"):
        check_input(load_model(ModelSpec(archive=tmp_path / "m.pt2"), SHAPE, CLASSES), SHAPE)


def test_pickle_needs_trust(tmp_path, reference):
    torch.save(reference, tmp_path / "m.pt")
    spec = ModelSpec(pickle=tmp_path / "m.pt")
    with pytest.raises(EdgeCompressError, match="(?s)runs Python code.*--trust-pickle"):
        load_model(spec, SHAPE, CLASSES)
    assert same_outputs(reference, load_model(spec, SHAPE, CLASSES, trust_pickle=True))
    torch.save(reference.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(EdgeCompressError, match="`weights:`"):
        load_model(ModelSpec(pickle=tmp_path / "sd.pt"), SHAPE, CLASSES, trust_pickle=True)


@pytest.mark.parametrize("fields,message", [
    ({"zoo": "mnist_cnn", "callable": "a.b:c"}, "exactly one of.*got zoo and callable"),
    ({}, "exactly one of.*got none"),
    ({"archive": "m.pt2", "weights": "w.safetensors"}, "`archive` already holds the whole model"),
    ({"callable": "no_colon_here"}, "package.module:function"),
    ({"zoo": "resnet_20"}, "did you mean 'resnet20'"),
    ({"zoo": "mnist_cnn", "kwarg": {}}, "Extra inputs"),
])
def test_spec_errors(fields, message):
    with pytest.raises(ValidationError, match=message):
        ModelSpec(**fields)


def test_bad_callables():
    with pytest.raises(EdgeCompressError, match="module 'no_such_module_xyz' not found"):
        load_model(ModelSpec(callable="no_such_module_xyz:make"), SHAPE, CLASSES)
    with pytest.raises(EdgeCompressError, match="(?s)has no attribute 'nope'.*MnistCNN"):
        load_model(ModelSpec(callable="edgecompress.zoo.cnn:nope"), SHAPE, CLASSES)
    with pytest.raises(EdgeCompressError, match="(?s)calling .* failed.*check model.kwargs"):
        load_model(ModelSpec(callable="edgecompress.zoo.cnn:mnist_cnn", kwargs={"depth": 3}), SHAPE, CLASSES)
    with pytest.raises(EdgeCompressError, match="not a torch.nn.Module"):
        load_model(ModelSpec(callable="edgecompress.zoo:names"), SHAPE, CLASSES)


def test_missing_files(tmp_path):
    for spec in (ModelSpec(archive=tmp_path / "m.pt2"), ModelSpec(pickle=tmp_path / "m.pt"),
                 ModelSpec(zoo="mnist_cnn", weights=tmp_path / "w.safetensors")):
        with pytest.raises(EdgeCompressError, match="file not found"):
            load_model(spec, SHAPE, CLASSES, trust_pickle=True)


def test_weights_that_do_not_fit(tmp_path, reference):
    save_file(reference.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(EdgeCompressError, match="shape mismatches: features.0.weight") as err:
        load_model(ModelSpec(zoo="mnist_cnn", weights=tmp_path / "w.safetensors"), SHAPE, CLASSES)  # width 1, not 0.5
    assert "w.safetensors" in str(err.value)
    with pytest.raises(EdgeCompressError, match="(?s)missing keys: stem.*unexpected keys: features"):
        load_model(ModelSpec(zoo="resnet20", weights=tmp_path / "w.safetensors"), SHAPE, CLASSES)
    torch.save(reference, tmp_path / "whole.pt")  # a pickled model is not a state_dict
    with pytest.raises(EdgeCompressError, match="(?s)weights_only.*--trust-pickle"):
        load_model(ModelSpec(zoo="mnist_cnn", weights=tmp_path / "whole.pt"), SHAPE, CLASSES)


def test_check_input_reports_the_shape_and_keeps_the_model_unchanged(reference):
    reference.train()
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    check_input(reference, SHAPE)
    assert reference.training and all(torch.equal(v, reference.state_dict()[k]) for k, v in before.items())
    with pytest.raises(EdgeCompressError, match=r"(?s)does not accept inputs.*\(3, 32, 32\).*channels") as err:
        check_input(reference, (3, 32, 32))
    assert "RuntimeError" in str(err.value)
    with pytest.raises(EdgeCompressError, match=r"outputs \[2, 10\].*has 5 classes"):
        check_input(reference, SHAPE, num_classes=5)
