"""Composite pruning (issue 4): prune.shifter, prune.lottery + Portfolio/Server, prune.pai, prune.reconvene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import edgecompress as ec
from edgecompress import zoo
from edgecompress.context import StageContext
from edgecompress.tasks import ClassificationTask, Task
from edgecompress.measure import count_params
from edgecompress.portfolio import Portfolio, Server
from edgecompress.prune.pai import PaIConfig, pai_scores
from edgecompress.prune.shifter import shift
from edgecompress.registry import get


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)


@torch.no_grad()
def test_shifter_exact_on_resnet_with_residuals():
    torch.manual_seed(0)
    model = zoo.build("resnet20", (3, 12, 12), 10, width=0.25)
    _randomize_bn(model)
    blocks = model.layers
    blocks[1].conv1.weight[3] = 0
    blocks[1].bn1.bias[3] = -0.4  # relu(beta) = 0: removable although the next conv is padded
    blocks[0].conv1.weight[2] = 0
    blocks[0].bn1.bias[2] = 0.3  # constant 0.3 into a padded conv: kept for exactness
    blocks[4].bn1.weight[1] = 0  # zero gamma kills the filter after BN folding
    blocks[4].bn1.bias[1] = -0.1
    for b in (blocks[6], blocks[7], blocks[8]):  # residual channel 5 of the last stage: zero in EVERY producer
        b.conv2.weight[5] = 0
        b.bn2.bias[5] = -1.0
    blocks[6].shortcut[0].weight[5] = 0
    blocks[6].shortcut[1].bias[5] = -1.0
    blocks[7].conv2.weight[6] = 0  # channel 6 is alive in the other producers of its group: must stay
    model.eval()
    x = torch.randn(6, 3, 12, 12)
    shifted, report = shift(model, torch.randn(2, 3, 12, 12))
    assert (shifted(x) - model(x)).abs().max() <= 1e-4
    sb = shifted.layers
    assert sb[1].conv1.out_channels == 3 and sb[1].conv2.in_channels == 3  # physically gone
    assert sb[4].conv1.out_channels == blocks[4].conv1.out_channels - 1
    assert sb[0].conv1.out_channels == 4 and "layers.0.conv1" in report["kept_dead"]
    assert sb[8].conv2.out_channels == 15 and shifted.fc.in_features == 15  # through the residual adds
    kept = report["kept_dead"]["layers.7.conv2"]  # indices are those when the layer was visited (5 was gone)
    assert len(kept) == 1 and next(iter(kept.values())).startswith("non-zero in coupled layer")
    assert report["params_after"] < report["params_before"]


@torch.no_grad()
def test_shifter_propagates_constants_into_unpadded_conv_and_linear():
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 5, 1, bias=False), nn.BatchNorm2d(5), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    _randomize_bn(model, seed=1)
    model[0].weight[1] = 0
    model[1].bias[1] = 0.7  # constant relu(0.7 - ...) into the 1x1 conv: folded into its bias
    model[3].weight[2] = 0
    model[4].bias[2] = 0.9  # constant through global pooling into the classifier bias
    model.eval()
    x = torch.randn(5, 2, 7, 7)
    shifted, report = shift(model, x[:2])
    assert shifted[0].out_channels == 5 and shifted[3].in_channels == 5
    assert shifted[3].out_channels == 4 and shifted[8].in_features == 4
    assert (shifted(x) - model(x)).abs().max() <= 1e-4
    assert report["channels_removed"] == 2 and not report["kept_dead"]


@torch.no_grad()
def test_shifter_nothing_to_remove_and_unsupported_layers():
    dense = zoo.build("mnist_cnn", (1, 8, 8), 10, width=0.25).eval()
    _, report = shift(dense, torch.randn(2, 1, 8, 8))
    assert report["params_ratio"] == 1.0 and report["channels_removed"] == 0
    odd = nn.Sequential(nn.Conv2d(1, 4, 1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 3, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    odd[0].weight[1] = 0
    shifted, report = shift(odd, torch.randn(2, 1, 5, 5))
    assert shifted[0].out_channels == 4 and "1" in report["kept_dead"]["0"]
    assert report["left_intact"] == ["1"]


def _tiny_task(n: int = 16) -> Task:
    gen = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 4, generator=gen), torch.randint(0, 2, (n,), generator=gen))
    return ClassificationTask("tiny", ds, ds, ds, (4,), 2)


def _flat_rank(scores: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.argsort(torch.cat([s.flatten() for s in scores.values()]), stable=True)


def test_pai_scores_follow_their_definitions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    task = _tiny_task()
    x, y = task.train.tensors
    cfg = {"batches": 1, "batch_size": 16}
    w = [model[0].weight, model[2].weight]
    loss = nn.functional.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, w, create_graph=True)
    expected_snip = {"0": (g[0] * w[0]).abs(), "2": (g[1] * w[1]).abs()}
    hg = torch.autograd.grad(sum((gi * gi.detach()).sum() for gi in g), w)
    expected_grasp = {"0": w[0] * hg[0], "2": w[1] * hg[1]}  # keep-score -(-w ⊙ Hg)
    a0, a1, a2 = (model[i].weight.detach().abs() for i in (0, 2, 4))  # synflow without the tanh: linear model
    for score, expected in (("snip", expected_snip), ("grasp", expected_grasp),
                            ("magnitude", {"0": w[0].abs(), "2": w[1].abs()})):
        got = pai_scores(model, score, task, PaIConfig(score=score, **cfg))
        for k in expected:
            torch.testing.assert_close(got[k], expected[k].detach(), rtol=1e-4, atol=1e-7)
        assert torch.equal(_flat_rank(got), _flat_rank({k: v.detach() for k, v in expected.items()}))
    linear = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3), nn.Linear(3, 2))
    with torch.no_grad():
        for i, m in enumerate(linear):
            m.weight.copy_(model[2 * i].weight)
            m.bias.zero_()
    got = pai_scores(linear, "synflow", task, PaIConfig(score="synflow", iterations=1, sparsity=0.0))
    ones = torch.ones(2)  # R = 1^T |W2| |W1| |W0| 1
    expected = {"0": ((ones @ a2) @ a1)[:, None] * a0, "1": (ones @ a2)[:, None] * (a0.sum(1))[None, :] * a1}
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-7)


def test_pai_stage_sparsity_and_random(digits_task):
    model = zoo.build("mnist_cnn", digits_task.input_shape, digits_task.num_classes, width=0.25)
    for score in ("random", "synflow"):
        ctx = StageContext(task=digits_task, progress=False)
        get("prune.pai")(model, get("prune.pai").config(score=score, sparsity=0.8, iterations=10), ctx)
        dens = ctx.info["layer_density"]
        assert "classifier" not in dens
        assert abs(1 - sum(d * dict(model.named_modules())[n].weight.numel() for n, d in dens.items())
                   / sum(dict(model.named_modules())[n].weight.numel() for n in dens) - 0.8) < 1e-3


def test_reconvene_is_dense_smaller_and_trains(digits_task):
    model = zoo.build("mnist_cnn", digits_task.input_shape, digits_task.num_classes, width=0.5)
    stage = get("prune.reconvene")
    ctx = StageContext(task=digits_task, progress=False)
    pruned = stage(model, stage.config(sparsity=0.8, probe_batches=3, tolerance=10.0), ctx)
    modules = dict(pruned.named_modules())
    assert ctx.info["structured"] and not ctx.info["kept_unstructured"]
    for name, (before, after) in ctx.info["structured"].items():
        assert modules[name].out_channels == after <= before
        assert bool((modules[name].weight != 0).all())  # converted layers are dense
    assert any(after < before for before, after in ctx.info["structured"].values())
    assert count_params(pruned) < 0.5 * count_params(model)
    trained = ec.apply("finetune", pruned, digits_task, epochs=3, lr=0.05)
    assert digits_task.evaluate_model(trained)["accuracy"] > 0.5  # chance is 0.1


def test_lottery_portfolio_switching(digits_task, tmp_path):
    model = zoo.build("mnist_cnn", digits_task.input_shape, digits_task.num_classes, width=0.25)
    stage = get("prune.lottery")
    ctx = StageContext(task=digits_task, progress=False, workdir=tmp_path / "lottery")
    last = stage(model, stage.config(levels=2, rate=0.6, epochs=1, rewind_batches=5, zero_dead_bn=True), ctx)
    levels = ctx.info["levels"]
    assert [lv["level"] for lv in levels] == [0, 1, 2]
    assert levels[2]["sparsity"] == pytest.approx(0.84, abs=0.01)
    assert abs(levels[2]["sparsity"] - ec.prune.lottery.sparsity(last)) < 1e-9
    pf = Portfolio.from_dir(tmp_path / "lottery", tmp_path / "pf", digits_task, repeats=5)
    assert len(pf.levels) == 3 and all(lv.max_abs_diff <= 1e-4 for lv in pf.levels)
    assert pf.levels[0].channels_removed == 0 and pf.levels[0].size_ratio == pytest.approx(1.0, abs=0.02)
    server = Server(pf)
    level, message = server.select(latency_ms=1e6)
    assert message.startswith(f"level {level} meets")
    assert pf.levels[level].accuracy_dense == max(lv.accuracy_dense for lv in pf.levels)
    level, message = server.select(latency_ms=1e-9)
    assert message.startswith("no level meets the budget")
    assert pf.levels[level].latency_dense_ms == min(lv.latency_dense_ms for lv in pf.levels)
    x = digits_task.example_inputs(4).numpy()
    assert server.switch(2) < 0.01 and server.current == 2
    np.testing.assert_allclose(server(x), last.eval()(torch.from_numpy(x)).detach().numpy(), atol=1e-4)
