"""prune.magnitude (torch.nn.utils.prune): exact sparsity, schedules, permanence, finetune keeping zeros."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.prune.magnitude import polynomial_schedule
from edgecompress.registry import get
from edgecompress.train import accuracy


@pytest.fixture
def base(digits_cnn):
    return digits_cnn


def run(name, model, task=None, **config):
    stage = get(name)
    ctx = StageContext(task=task, teacher=model, progress=False)
    return stage(model, stage.config(**config), ctx), ctx.info


def convs(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def zeros(tensor):
    return int((tensor == 0).sum())


def test_polynomial_schedule_matches_zhu_gupta():
    assert polynomial_schedule(0.8, 4) == pytest.approx([0.4625, 0.7, 0.7875, 0.8])  # 0.8 * (1 - (1 - t/4)^3)
    assert polynomial_schedule(0.9, 2, initial=0.5) == pytest.approx([0.85, 0.9])  # 0.9 - 0.4 * 0.5^3
    assert polynomial_schedule(0.5, 1) == [0.5]


def test_global_sparsity_exact_and_classifier_dense(base):
    before = {k: v.clone() for k, v in base.state_dict().items()}
    pruned, info = run("prune.magnitude", base, sparsity=0.7)
    layers = convs(pruned)
    total = sum(m.weight.numel() for m in layers.values())
    assert sum(zeros(m.weight) for m in layers.values()) / total == pytest.approx(0.7, abs=0.01)
    assert info["sparsity"] == pytest.approx(0.7, abs=0.01) and info["excluded"] == ["classifier"]
    assert zeros(pruned.classifier.weight) == 0
    # the masks are permanent: plain parameters, no reparametrisation or hooks left
    assert not any(hasattr(m, "weight_orig") or m._forward_pre_hooks for m in pruned.modules())
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # input model untouched


def test_local_sparsity_exact_per_layer(base):
    pruned, info = run("prune.magnitude", base, sparsity=0.6, scope="local", exclude_classifier=False)
    for name, m in [*convs(pruned).items(), ("classifier", pruned.classifier)]:
        assert zeros(m.weight) == round(0.6 * m.weight.numel()), name
        assert info["layers"][name]["sparsity"] == pytest.approx(0.6, abs=0.01)


def test_global_l2_normalises_layer_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 20), nn.Linear(20, 20), nn.Linear(20, 2))
    with torch.no_grad():
        model[1].weight.mul_(100)  # a layer at a much larger scale
    l1, _ = run("prune.magnitude", model, sparsity=0.5, norm="l1")
    l2, _ = run("prune.magnitude", model, sparsity=0.5, norm="l2")
    assert zeros(l1[0].weight) > 380 and zeros(l1[1].weight) < 20  # raw |w|: the small layer loses ~everything
    assert 100 < zeros(l2[0].weight) < 300 and 100 < zeros(l2[1].weight) < 300  # both layers share the pruning
    assert zeros(l2[0].weight) + zeros(l2[1].weight) == 400


def test_gradual_pruning_with_finetuning_keeps_zeros_and_accuracy(base, digits_task):
    pruned, info = run("prune.magnitude", base, digits_task, sparsity=0.8, schedule="gradual", steps=3,
                       epochs_per_step=1, lr=0.02)
    assert [s["target"] for s in info["steps"]] == pytest.approx(polynomial_schedule(0.8, 3))
    assert [s["sparsity"] for s in info["steps"]] == pytest.approx(polynomial_schedule(0.8, 3), abs=0.01)
    assert all(len(s["train"]) == 1 for s in info["steps"])
    # training between steps went through the masks: the final sparsity is exact, nothing grew back
    assert info["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert accuracy(pruned, digits_task, "test") >= 0.9


def test_finetune_keeps_pruned_zeros(base, digits_task):
    pruned, _ = run("prune.magnitude", base, sparsity=0.5)
    masks = {n: m.weight == 0 for n, m in convs(pruned).items()}
    tuned, info = run("finetune", pruned, digits_task, epochs=1)
    assert all(bool((m.weight[masks[n]] == 0).all()) for n, m in convs(tuned).items())
    assert sorted(info["zeros_kept_in"]) == sorted(masks)
    assert not any(hasattr(m, "weight_orig") for m in tuned.modules())
    regrown, _ = run("finetune", pruned, digits_task, epochs=1, keep_zeros=False)
    assert zeros(regrown.features[4].weight) < masks["features.4"].sum()  # without keep_zeros they regrow


def test_gradual_without_data_needs_a_task(base):
    with pytest.raises(EdgeCompressError, match="needs data"):
        run("prune.magnitude", base, schedule="gradual", epochs_per_step=1)
    _, info = run("prune.magnitude", base, sparsity=0.5, schedule="gradual", epochs_per_step=0)
    assert info["sparsity"] == pytest.approx(0.5, abs=0.01)
