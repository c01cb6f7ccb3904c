"""The sequential calibration engine (edgecompress.nn.sequential): the chain of blocks it finds, statistics equal
to hand-computed ones, propagation of changed layers, bounded activations, and GPTQ / recover.mimic /
recover.bias bit-identical to the per-layer prefix re-runs they did before the engine."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgecompress import zoo
from edgecompress.context import StageContext
from edgecompress.nn.capture import capture, capture_io
from edgecompress.nn.sequential import LayerBatch, SequentialRun, blocks, run_sequential
from edgecompress.quant.weights import QuantSpec, quantize_layers, select_layers
from edgecompress.registry import get
from edgecompress.tasks import ClassificationTask


class Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


class Net(nn.Module):
    """stem (a chain) -> residual block (kept whole) -> head (a chain); in-place ReLUs at block boundaries."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.res = Residual(8)
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.res(self.stem(x)))


class Detour(Net):
    """Not a chain: the head also sees the stem's output."""

    def forward(self, x):
        h = self.stem(x)
        return self.head(self.res(h) + h)


class InPlace(Net):
    """Looks like a chain to the hooks (same tensor objects), but changes the activations in place in between."""

    def forward(self, x):
        return self.head(self.res(self.stem(x)).mul_(2))


LAYERS = ["stem.0", "res.conv", "head.3"]


def _net(cls=Net) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():
        model.stem[1].running_mean.normal_()
    return model


def test_blocks_split_chains_and_keep_the_rest_whole():
    x = torch.randn(2, 3, 6, 6)
    assert blocks(_net(), x) == ["stem.0", "stem.1", "stem.2", "res", "head.0", "head.1", "head.2", "head.3"]
    assert blocks(_net(Detour), x) == [""]
    assert blocks(_net(InPlace), x) == [""]  # caught by the bit-exact check of the chain's output


def _naive(model, x, layers, *, observe, apply, reference=None, propagate=True, outputs=False, batch_size=64):
    """The per-layer loop the stages ran before the engine: every batch re-runs the model's prefix (capture)."""
    source = model if propagate else copy.deepcopy(model)
    for name in layers:
        for j, xb in enumerate(x.split(batch_size)):
            inp, out = capture_io(source, name, xb.clone())
            ref = None if reference is None else capture(reference, name, xb.clone(), "output")
            observe(name, LayerBatch(j, inp, out if outputs else None, ref))
        apply(name)
    return SequentialRun([""], 0)


def _record(run, model, x, reference=None, **kwargs):
    """Run ``run`` with an observer that keeps every batch and an apply that changes each layer's weights."""
    seen: dict[str, list[LayerBatch]] = {}

    def observe(name, batch):
        seen.setdefault(name, []).append(batch)

    def apply(name):
        with torch.no_grad():
            model.get_submodule(name).weight.mul_(-0.5)

    run(model, x, LAYERS, observe=observe, apply=apply, reference=reference, batch_size=16, **kwargs)
    return seen


@pytest.mark.parametrize("cls", [Net, Detour])
@pytest.mark.parametrize("propagate", [True, False])
def test_layers_see_what_the_prefix_rerun_sees(cls, propagate):
    """Inputs, outputs and reference outputs per layer and batch are bit-identical to capturing them from the
    whole model (changed so far, or as it was with propagate=False), block-cached or not."""
    x = torch.randn(40, 3, 6, 6)
    dense = _net(cls)
    got = _record(run_sequential, _net(cls), x, dense, propagate=propagate, outputs=True)
    want = _record(_naive, _net(cls), x, dense, propagate=propagate, outputs=True)
    for name in LAYERS:
        assert [b.index for b in got[name]] == [0, 1, 2]
        for a, b in zip(got[name], want[name]):
            assert torch.equal(a.input, b.input) and torch.equal(a.output, b.output), name
            assert torch.equal(a.reference, b.reference), name


def test_statistics_equal_hand_computed_and_changes_propagate():
    x = torch.randn(40, 3, 6, 6)
    model, original = _net(), _net()
    gram, norms = {}, {}

    def observe(name, batch):
        rows = batch.input.flatten(1) if name == "head.3" else batch.input.transpose(0, 1).flatten(1).t()
        gram[name] = gram.get(name, 0) + rows.t().double() @ rows.double()
        norms[name] = norms.get(name, 0) + batch.input.double().pow(2).sum()

    def apply(name):
        with torch.no_grad():
            model.get_submodule(name).weight.zero_()  # so the next layers see constant inputs

    run = run_sequential(model, x, LAYERS, observe=observe, apply=apply, batch_size=16)
    assert run.blocks[:3] == ["stem.0", "stem.1", "stem.2"] and run.forward_flops > 0
    first = capture(original, "stem.0", x, "input")  # the first layer: nothing changed before it
    channels = first.transpose(0, 1).flatten(1).t().double()
    torch.testing.assert_close(gram["stem.0"], channels.t() @ channels)
    torch.testing.assert_close(norms["stem.0"], first.double().pow(2).sum())
    later = capture(model, "res.conv", x, "input")  # the stem's conv zeroed: only BatchNorm's shift is left
    assert not torch.equal(later, capture(original, "res.conv", x, "input"))
    torch.testing.assert_close(norms["res.conv"], later.double().pow(2).sum())


def test_cached_activations_stay_within_one_block_boundary():
    """Live activation batches while a layer is observed: the cache (one entry per batch) and the batch being
    observed, however deep the model."""
    width, batch, n = 16, 8, 64
    for depth in (2, 12):
        model = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())]).eval()
        live = []

        def observe(_name, seen):
            if seen.index == n // batch - 1:  # the last batch of the layer
                live.append(sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and o.shape == (batch, width)))

        run_sequential(model, torch.randn(n, width), [str(2 * i) for i in range(depth)], observe=observe,
                       apply=lambda _name: None, batch_size=batch)
        assert max(live) <= n // batch + 1, depth  # the cache, one entry per batch, and the batch observed


def _prunable() -> tuple[nn.Module, nn.Module, ClassificationTask]:
    """A tiny ResNet (residual blocks kept whole) and a randomly sparsified, perturbed copy."""
    torch.manual_seed(0)
    dense = zoo.build("resnet20", (3, 8, 8), 4, width=0.25).eval()
    with torch.no_grad():
        for m in dense.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        for m in pruned.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(torch.rand(m.weight.shape) < 0.5).add_(0.05 * torch.randn(m.weight.shape))
                m.weight.mul_(m.weight.abs() > 0.05)
    x = torch.randn(80, 3, 8, 8)
    data = TensorDataset(x, torch.zeros(80, dtype=torch.long))
    return dense, pruned, ClassificationTask("toy", data, data, data, (3, 8, 8), 4)


@pytest.mark.parametrize("stage, config", [("recover.mimic", {}), ("recover.mimic", {"positions": 0}),
                                           ("recover.bias", {})])
def test_recovery_stages_equal_their_prefix_rerun_form(stage, config, monkeypatch):
    dense, pruned, task = _prunable()
    results = []
    for run in (run_sequential, _naive):
        monkeypatch.setattr(f"edgecompress.{stage}.run_sequential", run)
        s = get(stage)
        ctx = StageContext(task=task, teacher=dense, progress=False)
        results.append((s(pruned, s.config(calib_samples=80, batch_size=32, **config), ctx), ctx.info))
    (a, info_a), (b, info_b) = results
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert info_a.get("solved", info_a.get("corrected")) == info_b.get("solved", info_b.get("corrected"))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), pruned.state_dict().values()))


def test_gptq_equals_its_prefix_rerun_form(monkeypatch):
    dense, _, task = _prunable()
    x = task.calibration(80, seed=0)
    specs = {n: QuantSpec(3, 8) for n in select_layers(dense, x, [], "quant.weight")[0]}
    engine = copy.deepcopy(dense)
    quantize_layers(engine, specs, x, "gptq")
    monkeypatch.setattr("edgecompress.quant.weights.model.run_sequential", _naive)
    naive = copy.deepcopy(dense)
    quantize_layers(naive, specs, x, "gptq")
    assert all(torch.equal(p, q) for p, q in zip(engine.state_dict().values(), naive.state_dict().values()))
    assert not torch.equal(engine.fc.weight, dense.fc.weight)
