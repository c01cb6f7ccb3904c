"""prune.iterative and prune.ice (ICE-Pruning): the trigger, freezing, the lr schedule, targets, ablations."""

from __future__ import annotations

import warnings

import pytest
import torch
from pydantic import ValidationError

from edgecompress import zoo
from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.nn.bn import reestimate_bn
from edgecompress.prune.ice import IceConfig, ice_lr, train_batches, weight_nonzero
from edgecompress.prune.ice_search import budget_value, objective_value
from edgecompress.prune.iterative import IterativeConfig, prepare
from edgecompress.prune.steps import prune_group
from edgecompress.registry import get
from edgecompress.train import accuracy, train

QUICK = {"search": False, "freeze": False, "adapt_lr": False, "threshold": False}


@pytest.fixture(scope="module")
def trained(digits_task):
    model = zoo.build("mnist_cnn", digits_task.input_shape, digits_task.num_classes, width=0.5)
    train(model, digits_task, epochs=6, lr=0.05, progress=False)
    return model.eval()


def run(method: str, model, task, **config):
    stage = get(method)
    ctx = StageContext(task=task, progress=False)
    return stage(model, stage.config(**config), ctx), ctx.info


@pytest.mark.parametrize(("x", "b", "delta", "p", "beta", "expected"), [
    (0.85, 1e-3, 7e-4, 0.15, 50, 6.5e-4),             # x = 1 - p: base 1, half the step
    (0.5, 1e-3, 6e-4, 0.25, 1, 6e-4),                 # 0.5 / (1.5 - 0.5) = 0.5: 1e-3 - 6e-4 / 1.5
    (0.6, 5e-3, 8e-4, 0.2, 2, 5e-3 - 8e-4 / 1.36),    # (0.6 / 1.0)^2 = 0.36
    (0.5, 1e-3, 7e-4, 0.15, 50, 3e-4),                # far below 1 - p: b - delta
    (1.0, 1e-3, 7e-4, 0.15, 50, 1e-3),                # far above: b
])
def test_ice_lr_matches_formula(x, b, delta, p, beta, expected):
    assert ice_lr(x, b, delta, p, beta) == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_target_ratio_reached_in_both_modes(trained, digits_task):
    for mode in ("block", "uniform"):
        model, info = run("prune.iterative", trained, digits_task, target_ratio=0.6, mode=mode, steps=2,
                          max_batches=3, round_to=1)  # exact counts: no channel alignment
        assert info["channel_ratio"] >= 0.6 and info["finetuned_steps"] == 2
        widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert widths == [8 - 5, 16 - 10, 32 - 20, 64 - 39]  # C - ceil(0.6 C)
    _, info = run("prune.iterative", trained, digits_task, target_macs_ratio=0.3, max_batches=2)
    assert info["macs_after"] <= 0.3 * info["macs_before"]
    assert [s["macs_ratio"] for s in info["steps"]] == sorted((s["macs_ratio"] for s in info["steps"]), reverse=True)
    assert trained.features[0].out_channels == 8  # the input model is untouched


def test_trigger_skips_finetuning_below_tau(trained, digits_task):
    _, info = run("prune.ice", trained, digits_task, **{**QUICK, "threshold": True}, tau=100.0)
    assert info["finetuned_steps"] == 0 and info["skipped_finetunes"] == 4 and info["finetune_epochs"] == 0
    _, info = run("prune.ice", trained, digits_task, **{**QUICK, "threshold": True}, tau=5.0, max_batches=4)
    a0 = info["unpruned_accuracy"]
    for step in info["steps"]:  # fine-tuned exactly when the drop from A0 reached tau
        assert step["finetuned"] == ((a0 - step["accuracy_before_finetune"]) * 100 >= 5.0)
    assert info["skipped_finetunes"] == sum(not s["finetuned"] for s in info["steps"])
    assert info["finetune_epochs"] == info["finetuned_steps"]


def test_frozen_layers_do_not_change(trained, digits_task):
    model, info = run("prune.ice", trained, digits_task, **{**QUICK, "freeze": True}, freeze_fraction=0.5,
                      max_batches=6)
    frozen = info["frozen_layers"]
    assert len(frozen) == 2 and info["probe_epochs"] == 1 and all(s["frozen_layers"] == 2 for s in info["steps"])
    before, after = dict(trained.named_modules()), dict(model.named_modules())
    names = list(after)
    for name, layer in after.items():
        if isinstance(layer, torch.nn.Conv2d):  # kept weights are a subset of the original values
            kept = torch.isin(layer.weight.detach().flatten(), before[name].weight.detach().flatten()).all()
            assert bool(kept) == (name in frozen), name
            bn = names[names.index(name) + 1]  # the conv's BatchNorm is frozen with it
            kept = torch.isin(after[bn].weight.detach(), before[bn].weight.detach()).all()
            assert bool(kept) == (name in frozen), bn


def test_ablation_flags(trained, digits_task):
    common = {"search": False, "max_batches": 3}
    _, full = run("prune.ice", trained, digits_task, **common, tau=0.0)
    _, no_threshold = run("prune.ice", trained, digits_task, **common, threshold=False)
    assert all(s["finetuned"] and s["accuracy_before_finetune"] is None for s in no_threshold["steps"])
    assert full["frozen_layers"] and all(s["accuracy_before_finetune"] is not None for s in full["steps"])
    _, no_freeze = run("prune.ice", trained, digits_task, **common, freeze=False, tau=0.0)
    assert no_freeze["frozen_layers"] == [] and no_freeze["probe_epochs"] == 0
    _, no_lr = run("prune.ice", trained, digits_task, **common, adapt_lr=False, lr=2e-3, tau=0.0)
    assert {s["lr"] for s in no_lr["steps"]} == {2e-3}
    assert {round(s["lr"], 10) for s in full["steps"]} != {1e-3} and all(s["lr"] <= 1e-3 for s in full["steps"])
    assert full["search_seconds"] == 0.0 and "trials" not in full["search"]


def test_search_runs_the_grid_within_the_time(trained, digits_task):
    _, info = run("prune.ice", trained, digits_task, search_trials=2, max_batches=2)
    trials = info["search"]["trials"]
    assert len(trials) == 2 and 0 < info["search_seconds"] <= info["seconds"]
    assert info["search"]["subset"]["train"] == 64  # 2% of 1257 is 26: raised to search_min_samples
    assert {k: info["settings"][k] for k in info["search"]["best"]} == info["search"]["best"]


def test_bad_input(trained, digits_task):
    with pytest.raises(ValidationError, match="too small for one trial"):
        IceConfig(search_trials=0)
    IceConfig(search_trials=0, search=False)
    for bad in ({"tau": 101}, {"tau": -1}, {"freeze_fraction": 1.0}, {"lr_delta": 2e-3},
                {"target_ratio": 0.5, "target_macs_ratio": 0.5}):
        with pytest.raises(ValidationError):
            IceConfig(**bad)
    with pytest.raises(EdgeCompressError, match="unreachable"):
        run("prune.iterative", trained, digits_task, target_macs_ratio=0.001)
    tiny = zoo.build("mnist_cnn", digits_task.input_shape, digits_task.num_classes, width=0.25)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, info = run("prune.iterative", tiny, digits_task, target_ratio=0.95, max_batches=1, round_to=1)
    assert info["clamped_groups"] and any("keeps one channel" in str(w.message) for w in caught)
    assert min(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)) == 1


def test_residual_model_and_nonzero_count(digits_task):
    model = zoo.build("resnet20", digits_task.input_shape, digits_task.num_classes, width=0.25)
    pruned, info = run("prune.ice", model, digits_task, search=False, tau=0.0, target_ratio=0.5, steps=4,
                       max_batches=1)
    assert len(info["steps"]) == 4 and info["channel_ratio"] >= 0.5
    assert info["params_after"] < info["params_before"] and weight_nonzero(pruned) < weight_nonzero(model)
    with torch.no_grad():
        assert pruned(digits_task.example_inputs(2)).shape == (2, digits_task.num_classes)


def test_search_objectives():
    # the authors' objective mixes seconds and points: a 2 s trial losing 70 points beats one losing 2 points
    assert objective_value(2.0, 70.0) < objective_value(2.0, 2.0)
    # ours: within the tolerance the cheaper trial wins; any trial within it beats every trial outside it
    assert budget_value(1.0, 0.8, 1.0) < budget_value(5.0, 0.0, 1.0) < budget_value(0.1, 1.5, 1.0)
    assert budget_value(0.1, 1.5, 1.0) < budget_value(0.1, 70.0, 1.0)


def test_bn_recalibration_restores_accuracy_after_a_pruning_step(trained, digits_task):
    setup = prepare(trained, digits_task, None, IterativeConfig(target_ratio=0.5, steps=4), "test")
    for group_index, keep in setup.plan.steps[1]:
        prune_group(setup.plan.graph, setup.plan.groups[group_index], keep)
    params = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
    stale = accuracy(setup.model, digits_task, "val")
    bn = setup.model.features[5]
    mean = bn.running_mean.clone()
    reestimate_bn(setup.model, train_batches(digits_task, 4, batch_size=64, seed=0))
    assert all(torch.equal(p, params[n]) for n, p in setup.model.named_parameters())  # statistics only
    assert not torch.allclose(bn.running_mean, mean) and bn.momentum == 0.1 and not setup.model.training
    assert accuracy(setup.model, digits_task, "val") > stale
    _, info = run("prune.ice", trained, digits_task, **{**QUICK, "threshold": True}, tau=100.0,
                  recalibrate_bn=True, recalibrate_batches=2)
    assert info["finetune_epochs"] == 0 and info["components"]["recalibrate_bn"]
