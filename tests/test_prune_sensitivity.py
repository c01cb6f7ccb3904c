"""prune.structured's label-free choices: activation importance and per-layer ratios by measured sensitivity."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from pydantic import ValidationError
from torch import nn

from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.measure.counts import count_macs, count_params
from edgecompress.nn.bn import reestimate_bn
from edgecompress.nn.replay import PrefixReplay
from edgecompress.prune import sensitivity
from edgecompress.prune.importance import ActivationImportance, input_moments
from edgecompress.registry import get
from test_prune_structured import ToyResNet


def relative_error(model: nn.Module, reference: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        y = reference.eval()(x)
        return float((model.eval()(x) - y).pow(2).sum() / y.pow(2).sum())


def test_activation_importance_is_consumer_weight_energy_times_input_energy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    x = torch.randn(8, 2, 5, 5)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, list(range(4)))
    scores = ActivationImportance(input_moments(model, x))(group)
    with torch.no_grad():
        hidden = torch.relu(model[0](x))
    expected = model[2].weight.detach().pow(2).sum((0, 2, 3)) * hidden.pow(2).mean((0, 2, 3))
    assert torch.allclose(scores, expected, rtol=1e-4)


@pytest.mark.parametrize("net,recalibrate", [("toy_resnet", False), ("digits_cnn", False), ("digits_cnn", True)])
def test_masked_error_is_the_error_of_the_physically_pruned_model(net, recalibrate, digits_cnn, digits_task):
    """Masking a group's channels at its consumers (with the unchanged blocks before them replayed) measures
    exactly the error that removing them gives (and, with BatchNorm re-estimation, removing them then running
    recover.bn's re-estimation)."""
    torch.manual_seed(0)
    model = ToyResNet().eval() if net == "toy_resnet" else digits_cnn
    x = digits_task.calibration(16)
    if recalibrate:  # statistics of these inputs already, so re-estimation changes only what pruning changed
        model = copy.deepcopy(model)
        reestimate_bn(model, x.split(8))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    output = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    groups = list(graph.get_all_groups(ignored_layers=[output], root_module_types=(nn.Conv2d, nn.Linear)))
    importance = ActivationImportance(input_moments(model, x))
    allocation = sensitivity.measure(model, groups, importance, x, x[:1], [0.5], multiple=1, batch_size=8,
                                     recalibrate=recalibrate)
    assert len(allocation.curves) == len(groups) >= 3
    for curve in allocation.curves:
        pruned = sensitivity.apply(model, x[:1], allocation, {curve.name: curve.ratios[1]})
        if recalibrate:
            reestimate_bn(pruned, x.split(8))
        assert count_params(pruned) < count_params(model)
        # with re-estimation, blocks before the group are replayed with their inference outputs, whereas
        # re-estimating the pruned model normalises them with batch statistics: close, not equal
        tolerance = 0.08 if recalibrate else 1e-3
        assert relative_error(pruned, model, x) == pytest.approx(curve.errors[1], rel=tolerance, abs=1e-9)


@pytest.mark.parametrize("steps", [1, 2])
def test_sensitivity_ratios_lose_less_than_uniform_at_the_same_macs(steps, digits_cnn, digits_task):
    stage, x = get("prune.structured"), digits_task.test.tensors[0][:256]
    example = digits_task.example_inputs(1)
    errors = {}
    for label, options in {"uniform": {"criterion": "l2"},
                           "sensitivity": {"criterion": "activation", "scope": "sensitivity",
                                           "sensitivity_steps": steps}}.items():
        ctx = StageContext(task=digits_task, progress=False)
        pruned = stage(digits_cnn, stage.config(target_macs_ratio=0.5, round_to=1, **options), ctx)
        assert count_macs(pruned, example) <= 0.5 * count_macs(digits_cnn, example)
        errors[label] = relative_error(pruned, digits_cnn, x)
    chosen = [layer["chosen"] for layer in ctx.info["sensitivity"]["steps"][0]["layers"].values()]
    assert len(set(chosen)) > 1  # per-layer ratios, not one ratio
    assert len(ctx.info["sensitivity"]["steps"]) == steps
    assert errors["sensitivity"] < 0.7 * errors["uniform"]


def test_sensitivity_scope_needs_a_mac_target_and_a_label_free_criterion():
    config = get("prune.structured").config
    with pytest.raises(ValidationError, match="target_macs_ratio"):
        config(scope="sensitivity", ratio=0.5)
    with pytest.raises(ValidationError, match="taylor"):
        config(scope="sensitivity", target_macs_ratio=0.5, criterion="taylor")


class Doubling(nn.Module):
    def forward(self, x):
        return x.mul_(2)  # in place, like ReLU(inplace=True) or `out += identity`


def test_prefix_replay_returns_the_recorded_outputs_even_after_in_place_operations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Doubling(), nn.Linear(4, 3), Doubling()).eval()
    batches = [torch.randn(5, 4), torch.randn(2, 4)]
    replay = PrefixReplay(model, batches)
    assert replay.before([model[2]]) == [model[0], model[1]]
    for first_changed in (model[1], model[2], model[1]):  # an output modified in place must not change a replay
        for i, x in enumerate(batches):
            with replay.replaying(replay.before([first_changed]), i), torch.no_grad():
                assert torch.equal(model(x), replay.reference[i])
    assert "forward" not in vars(model[0])  # the real forward is back


@pytest.fixture(scope="module")
def resnet20_digits(digits_task):
    from edgecompress import zoo

    torch.manual_seed(0)
    return zoo.build("resnet20", digits_task.input_shape, digits_task.num_classes).eval()


def test_removable_blocks_are_the_residual_blocks_that_keep_their_input_shape(resnet20_digits, digits_task):
    x = digits_task.calibration(16)
    blocks = sensitivity.removable_blocks(resnet20_digits, x[:1], [resnet20_digits.fc])
    names = {m: n for n, m in resnet20_digits.named_modules()}
    # nine blocks; the first of stages 2 and 3 downsample (another shape), so seven can go
    assert [names[b] for b in blocks] == [f"layers.{i}" for i in (0, 1, 2, 4, 5, 7, 8)]
    allocation = sensitivity.measure(resnet20_digits, [], None, x, x[:1], [0.5], multiple=1, batch_size=8,
                                     blocks=blocks)
    for curve in allocation.curves:
        shorter = sensitivity.apply(resnet20_digits, x[:1], allocation, {curve.name: 1.0})
        assert isinstance(shorter.get_submodule(curve.name), nn.Identity)
        assert count_macs(shorter, x[:1]) < count_macs(resnet20_digits, x[:1])
        assert relative_error(shorter, resnet20_digits, x) == pytest.approx(curve.errors[1], rel=1e-3)


def test_remove_blocks_reaches_a_mac_target_that_thinning_alone_cannot(resnet20_digits, digits_task, tmp_path):
    """With at most 1/8 of any layer's channels removable, only whole blocks can take MACs down to 0.6; a
    checkpoint of the shorter model reloads (a resumed run rebuilds it)."""
    from edgecompress import zoo
    from edgecompress.checkpoint import load_model, save_model

    stage, example = get("prune.structured"), digits_task.example_inputs(1)
    ctx = StageContext(task=digits_task, progress=False)
    config = stage.config(scope="sensitivity", target_macs_ratio=0.6, sensitivity_ratios=[0.125], round_to=1,
                          calib_samples=16, remove_blocks=True)
    pruned = stage(resnet20_digits, config, ctx)
    removed = ctx.info["sensitivity"]["steps"][0]["removed_blocks"]
    assert removed and all(isinstance(pruned.get_submodule(n), nn.Identity) for n in removed)
    assert count_macs(pruned, example) <= 0.6 * count_macs(resnet20_digits, example)
    assert ctx.info["channels"][f"{removed[0]}.conv1"][1] == 0  # reported as gone
    save_model(pruned, tmp_path)
    back = load_model(tmp_path, lambda arch: zoo.build("resnet20", digits_task.input_shape, digits_task.num_classes))
    x = digits_task.calibration(8)
    with torch.no_grad():
        assert torch.allclose(back.eval()(x), pruned.eval()(x), atol=1e-6)
    with pytest.raises(EdgeCompressError, match="MACs reached only"):
        stage(resnet20_digits, config.model_copy(update={"remove_blocks": False}), ctx)


def test_latency_target_needs_the_sensitivity_scope_and_onnx_runtime(resnet20_digits, digits_task):
    from edgecompress.settings import ExportSettings

    stage = get("prune.structured")
    with pytest.raises(ValidationError, match="one of ratio, target_macs_ratio or target_latency_ratio"):
        stage.config(scope="sensitivity", target_latency_ratio=0.5, ratio=0.3)
    with pytest.raises(ValidationError, match="scope: sensitivity"):
        stage.config(target_latency_ratio=0.5)
    with pytest.raises(ValidationError, match="scope: sensitivity"):
        stage.config(ratio=0.5, remove_blocks=True)
    ctx = StageContext(task=digits_task, progress=False, export=ExportSettings(format="executorch"))
    with pytest.raises(EdgeCompressError, match="measured in onnxruntime, not in executorch"):
        stage(resnet20_digits, stage.config(scope="sensitivity", target_latency_ratio=0.5), ctx)


@pytest.mark.slow
def test_latency_target_is_met_as_measured_side_by_side_in_onnx_runtime(resnet20_digits, digits_task):
    stage, example = get("prune.structured"), digits_task.example_inputs(1)
    ctx = StageContext(task=digits_task, progress=False)
    pruned = stage(resnet20_digits, stage.config(scope="sensitivity", target_latency_ratio=0.8, calib_samples=16,
                                                 remove_blocks=True), ctx)
    latency = ctx.info["latency"]
    assert latency["measured_ratio"] <= 0.8 and 0 < latency["predicted_ratio"] < 1
    assert latency["units_timed"] > 10 and latency["models_timed"] >= 2
    assert count_macs(pruned, example) < count_macs(resnet20_digits, example)
    with torch.no_grad():
        assert pruned(example).shape == resnet20_digits(example).shape


def test_refine_gives_back_pruning_the_budget_does_not_need():
    # a group and a block whose savings add up exactly (the cost is 1 - saved): the multiplier's solutions jump
    # from 0.875 (the group's first step) to 0.375 (that step and the block), far under a 0.75 budget
    curves = [sensitivity.GroupCurve("a", None, [], [0.0, 0.5, 1.0], [0.0, 0.01, 0.2], [0.0, 0.125, 0.25]),
              sensitivity.GroupCurve("block", None, [], [0.0, 1.0], [0.0, 0.05], [0.0, 0.5], block=True)]
    allocation = sensitivity.Allocation(curves)

    def cost(ratios: dict[str, float]) -> float:
        return 1 - sum(c.saved[c.ratios.index(ratios.get(c.name, 0.0))] for c in curves)

    chosen, spent = sensitivity.solve(allocation, cost, 0.75)
    assert (chosen, spent) == ({"a": 0.5, "block": 1.0}, 0.375)
    refined, refined_cost = sensitivity.refine(allocation, chosen, spent, cost, 0.75)
    assert (refined, refined_cost) == ({"block": 1.0}, 0.5)  # the least error within the budget
    error = lambda ratios: sum(c.errors[c.ratios.index(ratios.get(c.name, 0.0))] for c in curves)  # noqa: E731
    assert error(refined) < error(chosen)
    assert {c.name: c.chosen for c in curves if c.chosen} == refined
    assert sensitivity.refine(allocation, chosen, spent, cost, 0.75, tries=0) == (chosen, spent)


def test_latency_table_times_large_unit_sets_in_memory_bounded_calls():
    from edgecompress.measure.latency_model import LatencyTable, _chunks

    assert _chunks([3, 3, 3, 9, 1], limit=6) == [[0, 1], [2], [3], [4]]
    assert _chunks([], limit=6) == []
    # a session's memory: weights plus every tensor of a forward, at the table's batch size
    conv, table = nn.Conv2d(3, 8, 3, padding=1), LatencyTable(batch=4)
    assert table._bytes(conv, (3, 5, 5)) == 4 * (3 * 8 * 9 + 8 + 4 * (3 + 8) * 25)
