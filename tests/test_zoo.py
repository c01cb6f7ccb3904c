"""Zoo models: build for several input shapes, parameter counts, one call per module, registry errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecompress import zoo
from edgecompress.errors import EdgeCompressError


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", zoo.names())
@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 100)])
def test_forward_shape(name, shape, classes):
    model = zoo.build(name, shape, classes).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, classes)
    head = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert head[0].split(".")[-1] in ("classifier", "fc", "_fc") and head[1].out_features == classes


@pytest.mark.parametrize("name,shape", [("ds_cnn", (1, 49, 10)), ("mnist_cnn", (1, 8, 8)), ("mnist_cnn", (1, 40)),
                                        ("resnet20", (1, 8, 8)), ("vgg11_bn", (1, 8, 8)), ("mobilenet_v2", (3, 8, 8))])
def test_other_input_shapes(name, shape):
    with torch.no_grad():
        assert zoo.build(name, shape, 12).eval()(torch.randn(2, *shape)).shape == (2, 12)


@pytest.mark.parametrize("name,expected", [("resnet20", 0.27e6), ("resnet56", 0.85e6), ("resnet18", 11.2e6),
                                           ("mnist_cnn", 98e3)])
def test_parameter_counts(name, expected):
    shape = (1, 28, 28) if name == "mnist_cnn" else (3, 32, 32)
    assert n_params(zoo.build(name, shape, 10)) == pytest.approx(expected, rel=0.05)


def test_width_scales_channels():
    full, half = (n_params(zoo.build("resnet20", (3, 32, 32), 10, width=w)) for w in (1.0, 0.5))
    assert half < 0.3 * full
    full, half = (n_params(zoo.build("mobilenet_v2", (3, 32, 32), 10, width_mult=w)) for w in (1.0, 0.5))
    assert half < 0.5 * full


@pytest.mark.parametrize("name", zoo.names())
def test_each_module_called_once(name):
    """PT2E quantization fails on a module instance used twice in forward (e.g. a shared ReLU)."""
    shape = (1, 49, 10) if name == "ds_cnn" else (3, 32, 32)
    model = zoo.build(name, shape, 10).eval()
    assert len(list(model.named_modules(remove_duplicate=False))) == len(list(model.modules()))
    calls: dict[str, int] = {}
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    for leaf_name, leaf in leaves:
        leaf.register_forward_hook(lambda *_, key=leaf_name: calls.__setitem__(key, calls.get(key, 0) + 1))
    with torch.no_grad():
        model(torch.randn(1, *shape))
    assert calls == {leaf_name: 1 for leaf_name, _ in leaves}


def test_build_records_architecture():
    model = zoo.build("resnet20", (3, 32, 32), 10, width=0.5)
    arch = model._edgecompress_arch
    assert arch == {"zoo": "resnet20", "input_shape": [3, 32, 32], "num_classes": 10, "kwargs": {"width": 0.5}}
    rebuilt = zoo.build(arch["zoo"], tuple(arch["input_shape"]), arch["num_classes"], **arch["kwargs"])
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_unknown_name_suggests_closest():
    with pytest.raises(EdgeCompressError, match="did you mean 'resnet20'") as err:
        zoo.build("resnt20", (3, 32, 32), 10)
    assert "mobilenet_v2" in str(err.value)  # lists the known names


def test_bad_options_and_shapes():
    with pytest.raises(EdgeCompressError, match="(?s)does not take.*depth.*use only: width"):
        zoo.build("resnet20", (3, 32, 32), 10, depth=3)
    with pytest.raises(EdgeCompressError, match="mnist_cnn"):
        zoo.build("resnet20", (1, 40), 10)  # 1-D data: points to the model that takes it
    with pytest.raises(EdgeCompressError, match="positive"):
        zoo.build("mnist_cnn", (1, 0, 28), 10)
    with pytest.raises(EdgeCompressError, match="width must be > 0"):
        zoo.build("vgg11_bn", (3, 32, 32), 10, width=0)


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="registered twice"):
        zoo.register_model("mnist_cnn")(lambda input_shape, num_classes: nn.Identity())
