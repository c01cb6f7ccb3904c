"""Label-free recovery after pruning (issue 6): recover.mimic, recover.bias, recover.bn, data-free inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import edgecompress as ec
import edgecompress.prune  # registers the prune.* stages used below
from edgecompress import zoo
from edgecompress.context import StageContext
from edgecompress.tasks import ClassificationTask, Task
from edgecompress.measure import count_macs
from edgecompress.recover.datafree import synthesize
from edgecompress.recover.flops import gram_flops, solve_flops
from edgecompress.recover.lstsq import MaskedLstsq
from edgecompress.registry import get
from edgecompress.train import accuracy, train


def _task(x: torch.Tensor) -> Task:
    data = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    return ClassificationTask("toy", data, data, data, tuple(x.shape[1:]), 2)


def _run(method: str, model: nn.Module, task: Task | None, teacher: nn.Module, **config):
    stage = get(method)
    ctx = StageContext(task=task, teacher=teacher, progress=False)
    return stage(model, stage.config(**config), ctx), ctx.info


def _sparse_(model: nn.Module, density: float, seed: int) -> None:
    """Zero a random (1 - density) of every Conv/Linear weight, in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_((torch.rand(m.weight.shape, generator=gen) < density).float())


def _perturbed(model: nn.Module, seed: int) -> nn.Module:
    """A copy whose surviving weights and biases are perturbed (zeros stay zero): the 'pruned' model."""
    import copy
    gen = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for m in out.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.add_(0.3 * torch.randn(m.weight.shape, generator=gen) * (m.weight != 0))
                if m.bias is not None:
                    m.bias.add_(0.3 * torch.randn(m.bias.shape, generator=gen))
    return out


def _rel_error(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    return float((ya - yb).norm() / yb.norm())


def test_exact_reconstruction_linear():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
    _sparse_(dense, 0.5, seed=1)
    pruned = _perturbed(dense, seed=2)
    x = torch.randn(200, 12)
    assert _rel_error(pruned, dense, x) > 0.1
    out, info = _run("recover.mimic", pruned, _task(x), dense, damping=0.0, recalibrate_bn=False, calib_samples=200)
    assert _rel_error(out, dense, x) < 1e-5
    assert set(info["solved"]) == {"0", "2"} and info["labels_used"] == 0


def test_exact_reconstruction_conv_strided_dilated_grouped_depthwise():
    torch.manual_seed(0)
    dense = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.1),
        nn.Conv2d(8, 12, 1, groups=2), nn.LeakyReLU(0.1),  # grouped, with bias (leaky: no dead, collinear inputs)
        nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=12, bias=False), nn.BatchNorm2d(12),  # depthwise
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4))
    _sparse_(dense, 0.6, seed=1)
    dense.eval().double()  # float64 end to end: the reconstruction is exact up to float64 round-off
    pruned = _perturbed(dense, seed=2)
    x = torch.randn(256, 3, 8, 8, dtype=torch.float64)
    assert _rel_error(pruned, dense, x) > 0.1
    out, info = _run("recover.mimic", pruned, _task(x), dense, damping=0.0, recalibrate_bn=False, positions=0,
                     calib_samples=256)
    assert _rel_error(out, dense, x) < 1e-9
    assert info["skipped"] == {}
    for (name, a), b in zip(out.named_modules(), dense.modules()):  # the mask is respected
        if isinstance(a, (nn.Conv2d, nn.Linear)):
            assert torch.equal(a.weight == 0, b.weight == 0), name


def test_flop_counts_match_hand_counts():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 2, 0], [0, 0, 0, 3], [1, 1, 1, 1]]))
    solver = MaskedLstsq(layer, intercept=True)
    x = torch.randn(10, 4)
    solver.add(x, layer(x).detach())
    assert solver.gram_flops == 2 * 10 * 5 * 5 + 2 * 10 * 5 * 3 == 800
    solver.solve(layer.weight, layer.bias, 0.0)
    # rows keep 2, 1, 4 weights, plus the intercept: Cholesky k^3/3 + two triangular solves 2k^2
    assert solver.solve_flops == (9 + 18) + (2 + 8) + (41 + 50) == sum(solve_flops(k) for k in (3, 2, 5))
    assert gram_flops(10, 5, 3) == 800

    conv = nn.Conv2d(2, 4, 2, groups=2, bias=False)  # per group: k = 1 * 2 * 2 = 4 inputs, 2 outputs
    solver = MaskedLstsq(conv, intercept=False)
    x = torch.randn(3, 2, 3, 3)  # 2 x 2 output positions: n = 3 * 4 = 12 rows
    solver.add(x, conv(x).detach())
    assert solver.gram_flops == 2 * (2 * 12 * 4 * 4 + 2 * 12 * 4 * 2)

    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 3))
    assert count_macs(model, torch.zeros(1, 1, 4, 4)) == 2 * 9 * 16 + 32 * 3
    _, info = _run("recover.bn", model, _task(torch.randn(10, 1, 4, 4)), model, calib_samples=10)
    assert info["recovery_flops"] == 2 * (2 * 9 * 16 + 32 * 3) * 10


def test_finetune_reports_flops_and_labels():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x = torch.randn(40, 1, 4, 4)
    data = TensorDataset(x, (x.sum((1, 2, 3)) > 0).long())
    task = ClassificationTask("toy", data, data, data, (1, 4, 4), 2)
    _, info = _run("finetune", model, task, model, epochs=2)
    assert info["recovery_flops"] == 3 * 2 * 32 * 40 * 2 and info["labels_used"] == 40


def test_nothing_pruned_is_reported_and_unchanged():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    task = _task(torch.randn(20, 4))
    for method in ("recover.mimic", "recover.bias"):
        with pytest.warns(UserWarning, match="nothing was pruned"):
            out, info = _run(method, model, task, model)
        assert "nothing was pruned" in info["warning"] and info["recovery_flops"] == 0
        assert all(torch.equal(a, b) for a, b in zip(out.parameters(), model.parameters()))


def test_too_few_samples_warns_and_damps():
    dense = nn.Sequential(nn.Linear(32, 8))
    pruned = _perturbed(dense, seed=0)
    with pytest.warns(UserWarning, match="damping raised"):
        out, info = _run("recover.mimic", pruned, _task(torch.randn(8, 32)), dense, calib_samples=8)
    assert info["underdetermined"] == ["0"] and info["solved"]["0"]["damping"] >= 0.1
    assert all(torch.isfinite(p).all() for p in out.parameters())


def test_structured_pruning_skips_and_lists_reshaped_layers(digits_task):
    dense = zoo.build("mnist_cnn", digits_task.input_shape, 10, width=0.5).eval()
    pruned = ec.apply("prune.structured", dense, digits_task, ratio=0.5)
    _, info = _run("recover.mimic", pruned, digits_task, dense, calib_samples=64)
    assert "classifier" in info["solved"]
    assert info["skipped"] and all("structured" in why for why in info["skipped"].values())


def test_recovery_keeps_mask_and_never_lowers_accuracy(digits_task):
    dense = zoo.build("mnist_cnn", digits_task.input_shape, 10, width=0.5)
    train(dense, digits_task, epochs=4, lr=0.05, progress=False)
    dense.eval()
    pruned = ec.apply("prune.magnitude", dense, digits_task, sparsity=0.8)
    base = accuracy(pruned, digits_task, "test")
    for method in ("recover.mimic", "recover.bias", "recover.bn"):
        out, info = _run(method, pruned, digits_task, dense, calib_samples=256)
        assert accuracy(out, digits_task, "test") >= base, method
        assert info["labels_used"] == 0 and info["recovery_flops"] > 0
        for (name, a), b in zip(out.named_modules(), pruned.modules()):
            if isinstance(a, (nn.Conv2d, nn.Linear)):
                assert bool((a.weight[b.weight == 0] == 0).all()), (method, name)


def test_data_free_inputs_and_recovery(digits_task):
    dense = zoo.build("mnist_cnn", digits_task.input_shape, 10, width=0.5)
    train(dense, digits_task, epochs=1, lr=0.05, progress=False)
    dense.eval()
    x, info = synthesize(dense, digits_task.input_shape, 16, steps=20, lr=0.1, batch_size=16)
    assert x.shape == (16, *digits_task.input_shape) and torch.isfinite(x).all()
    assert info["bn_loss_end"] < info["bn_loss_start"]
    pruned = ec.apply("prune.magnitude", dense, digits_task, sparsity=0.7)
    out, info = _run("recover.mimic", pruned, None, dense, data="auto", calib_samples=32, synth_steps=5)
    assert info["data"].startswith("synthetic") and info["flops"]["synthesis"] > 0 and info["labels_used"] == 0
    assert all(torch.isfinite(p).all() for p in out.parameters())
