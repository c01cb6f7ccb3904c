"""prune.structured (torch-pruning, channels physically removed), prunability analysis, finetune recovery."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from edgecompress import zoo
from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.measure.counts import count_macs, count_params
from edgecompress.prune.analysis import prunability
from edgecompress.registry import get
from edgecompress.train import accuracy


@pytest.fixture
def base(digits_cnn):
    return digits_cnn


def prune(model, task, **config):
    stage = get("prune.structured")
    ctx = StageContext(task=task, teacher=model, progress=False)
    return stage(model, stage.config(**config), ctx), ctx


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class ToyResNet(nn.Module):
    """stem -> identity block -> downsampling block (1x1 shortcut) -> pool -> fc: skip adds couple channels."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.layer1, self.layer2 = Block(16, 16), Block(16, 32, stride=2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


class HardCodedView(nn.Module):
    """Flattens with a hard-coded size: pruning conv2 changes the size and breaks the forward."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(512, 10)

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.conv1(x))).reshape(-1, 512))


def test_ratio_half_removes_channels_and_three_quarters_of_params(base, digits_task):
    before = {k: v.clone() for k, v in base.state_dict().items()}
    pruned, ctx = prune(base, digits_task, ratio=0.5)
    # every conv keeps half its filters: the same architecture as mnist_cnn at width 0.5 (~25% of the params)
    expected = count_params(zoo.build("mnist_cnn", (1, 8, 8), 10, width=0.5))
    assert abs(count_params(pruned) - expected) <= 0.1 * expected
    assert count_params(pruned) < 0.3 * count_params(base)
    assert [m.weight.shape[0] for m in pruned.features if isinstance(m, nn.Conv2d)] == [8, 16, 32, 64]
    assert pruned.classifier.weight.shape == (10, 64)  # the classifier keeps its 10 outputs
    assert pruned(digits_task.example_inputs(4)).shape == (4, 10)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # input model untouched
    info = ctx.info
    assert info["channels"]["features.0"] == [16, 8] and info["ignored_layers"] == ["classifier"]
    assert info["params_after"] == count_params(pruned) and info["channel_ratio"] == pytest.approx(0.5)
    assert info["macs_after"] < 0.3 * info["macs_before"]


def test_target_macs_ratio_reached_without_overshooting(base, digits_task):
    pruned, ctx = prune(base, digits_task, target_macs_ratio=0.5)
    ratio = count_macs(pruned, digits_task.example_inputs(1)) / count_macs(base, digits_task.example_inputs(1))
    assert 0.35 < ratio <= 0.5
    assert ctx.info["macs_ratio"] == pytest.approx(ratio)


@pytest.mark.parametrize("criterion,scope", [("l1", "uniform"), ("l2", "global"), ("taylor", "uniform"),
                                             ("taylor", "global"), ("bn_scale", "global")])
def test_each_criterion_prunes(base, digits_task, criterion, scope):
    pruned, ctx = prune(base, digits_task, ratio=0.4, criterion=criterion, scope=scope, taylor_batches=2,
                        round_to=1)  # exact counts: no channel alignment
    assert count_params(pruned) < 0.6 * count_params(base)
    assert ctx.info["channel_ratio"] == pytest.approx(0.4, abs=0.02)
    assert pruned(digits_task.example_inputs(2)).shape == (2, 10)
    assert all(p.grad is None for p in pruned.parameters())  # taylor gradients are cleared


def test_residual_model_pruned_consistently(digits_task):
    torch.manual_seed(0)
    model = ToyResNet().eval()
    pruned, _ = prune(model, digits_task, ratio=0.5, round_to=2)
    # channels joined by a skip add are pruned together, so the adds still line up
    assert pruned.stem.out_channels == pruned.layer1.conv2.out_channels == pruned.layer2.conv1.in_channels == 8
    assert pruned.layer2.conv2.out_channels == pruned.layer2.shortcut[0].out_channels == pruned.fc.in_features == 16
    assert pruned.layer2.bn2.num_features == 16
    assert pruned(digits_task.example_inputs(3)).shape == (3, 10)
    assert count_params(pruned) < 0.35 * count_params(model)


def test_ignored_layers_keep_their_channels(base, digits_task):
    pruned, ctx = prune(base, digits_task, ratio=0.5, ignored_layers=["features.4", "features.1?"])
    assert pruned.features[4].out_channels == 32  # named exactly
    assert pruned.features[11].out_channels == 128  # matched by the glob
    assert pruned.features[8].out_channels == 32
    assert "features.4" in ctx.info["ignored_layers"] and "classifier" in ctx.info["ignored_layers"]


def test_unknown_ignored_name_lists_close_names(base, digits_task):
    with pytest.raises(EdgeCompressError) as err:
        prune(base, digits_task, ignored_layers=["feature.4"])
    assert "feature.4" in err.value.what and "features.4" in err.value.fix


def test_config_validation():
    config = get("prune.structured").config
    assert config().ratio == 0.5 and config(target_macs_ratio=0.4).ratio is None
    for bad in ({"ratio": 0.5, "target_macs_ratio": 0.5}, {"ratio": 0.99}, {"criterion": "l3"}, {"rate": 0.5}):
        with pytest.raises(ValidationError):
            config(**bad)


def test_broken_forward_after_pruning_names_the_layer_to_ignore(digits_task):
    model = HardCodedView()
    with pytest.raises(EdgeCompressError) as err:
        prune(model, digits_task, ratio=0.5)
    assert "running the pruned model failed" in err.value.what and "ignored_layers: [conv2]" in err.value.fix
    pruned, _ = prune(model, digits_task, ratio=0.5, ignored_layers=["conv2"])  # the suggested fix works
    assert pruned.conv1.out_channels == 4 and pruned.conv2.out_channels == 8


def test_untraceable_model_is_a_clear_error(digits_task):
    class ReturnsObject(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return {"logits": self.conv(x)}.items()  # not a tensor, tuple, list or dict

    with pytest.raises(EdgeCompressError, match="returned a dict_items, not tensors"):
        prune(ReturnsObject(), digits_task)


def test_prunability_explains_each_layer():
    class Net(ToyResNet):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)

        def forward(self, x):
            x = self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))
            return self.fc(self.dw(x).mean((2, 3)))

    result = prunability(Net(), torch.randn(1, 1, 8, 8), ignored_layers=["layer1.conv1"])
    assert result["fc"] == (False, "final classifier: its outputs are the model's outputs")
    assert result["layer1.conv1"] == (False, "ignored by user")
    assert result["stem"][0] and "layer1.conv2" in result["stem"][1]  # coupled through the skip add
    assert result["dw"][0] and "depthwise" in result["dw"][1]
    assert result["layer2.conv1"] == (True, "prunable")


def test_finetune_recovers_accuracy_after_structured_pruning(base, digits_task):
    pruned, ctx = prune(base, digits_task, ratio=0.5)
    stage = get("finetune")
    ctx = StageContext(task=digits_task, teacher=base, progress=False)
    tuned = stage(pruned, stage.config(epochs=4, lr=0.05), ctx)
    assert accuracy(tuned, digits_task, "test") >= 0.90
    assert ctx.info["val_accuracy_after"] > ctx.info["val_accuracy_before"]
    assert len(ctx.info["history"]) == 4 and ctx.info["zeros_kept_in"] == []
