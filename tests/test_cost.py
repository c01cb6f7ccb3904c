"""What compression costs: the FLOP meter against counted MACs, and the typed report every stage gets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecompress.context import StageReport
from edgecompress.measure import count_macs
from edgecompress.measure.cost import CostMeter
from edgecompress.pipeline import Pipeline
from edgecompress.recipe import parse_recipe


def test_meter_counts_layer_flops_of_forward_and_backward_passes():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, groups=8),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    x = torch.randn(4, 3, 8, 8)
    with CostMeter() as meter, torch.no_grad():
        model(x)
    assert meter.forward == 2 * 4 * count_macs(model, x[:1]) and meter.backward == 0
    with CostMeter() as meter:
        model(x).sum().backward()
    assert meter.backward == 2 * meter.forward > 0 and meter.wall > 0 and meter.cpu >= 0
    with CostMeter() as meter:
        model(x)  # a graph is built but nobody differentiates it (e.g. graph tracing): no backward counted
    assert meter.forward > 0 and meter.backward == 0
    up = nn.ConvTranspose2d(2, 3, 2, stride=2)
    with CostMeter() as meter, torch.no_grad():
        up(torch.randn(1, 2, 5, 5))
    assert meter.forward == 2 * (2 * 5 * 5) * 3 * 2 * 2  # every input element feeds out/groups x kernel outputs


@pytest.mark.slow
def test_every_stage_gets_a_typed_report(tmp_path, digits_task):
    recipe = parse_recipe({
        "name": "cost", "seed": 2,
        "model": {"zoo": "mnist_cnn", "kwargs": {"width": 0.5}, "pretrain": {"epochs": 1, "batch_size": 32}},
        "data": {"dataset": "digits"},
        "stages": [{"method": "prune.structured", "ratio": 0.3},
                   {"method": "finetune", "epochs": 2, "lr": 0.02},
                   {"method": "recover.bn", "calib_samples": 96}],
        "export": {"repeats": 3, "warmup": 1},
    })
    result = Pipeline(recipe, tmp_path / "run", task=digits_task, progress=False, report=False).run()
    reports = {h["name"]: StageReport(**h["report"]) for h in result.history}
    train, val = len(digits_task.train), len(digits_task.val)
    prune, tune, bn = reports["prune.structured"], reports["finetune"], reports["recover.bn"]
    assert prune.labels_used == 0 and prune.flops_backward == 0  # l2 importance needs no data
    assert tune.labels_used == train + val and tune.unlabeled_samples == 0  # trains on train, reports on val
    pruned_macs = result.history[1]["metrics"]["macs"]
    assert tune.flops_backward == 2 * (2 * pruned_macs * train * 2)  # 2 epochs over the train split, with grads
    assert tune.flops_forward >= 2 * pruned_macs * (2 * train + val)
    assert bn.labels_used == 0 and bn.unlabeled_samples == 96 and bn.flops_backward == 0
    assert all(r.wall_seconds > 0 and r.cpu_seconds > 0 for r in (tune, bn))
    cost = result.summary["compression_cost"]
    assert cost["labels_used"] == train + val and cost["unlabeled_samples"] == 96
    assert cost["flops"] == sum(r.flops for r in (prune, tune, bn))
    assert cost["cpu_seconds"] == pytest.approx(sum(r.cpu_seconds for r in (prune, tune, bn)), abs=1e-3)
