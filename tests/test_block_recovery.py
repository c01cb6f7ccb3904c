"""recover.block: block-wise reconstruction after structured pruning, label-free, on a network trained here."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

import edgecompress as ec
from edgecompress.recover.reconstruct import units
from edgecompress.tasks import UnlabeledTask, torch_predictor


def _unlabeled(task) -> UnlabeledTask:
    splits = (TensorDataset(task.split(s).tensors[0]) for s in ("train", "val", "test"))
    return UnlabeledTask("digits-unlabeled", *splits, task.input_shape, task.num_classes)


def test_block_reconstruction_beats_mimic_alone(digits_task, digits_cnn):
    task = _unlabeled(digits_task)
    task.bind_reference(digits_cnn)
    pruned = ec.apply("prune.structured", digits_cnn, task, ratio=0.6)
    agree = {}
    for name, method, cfg in [("mimic", "recover.mimic", {}), ("block", "recover.block", {"steps": 60})]:
        recovered = ec.apply(method, pruned, task, teacher=digits_cnn, calib_samples=256, **cfg)
        agree[name] = task.evaluate(torch_predictor(recovered))["agreement_top1"]
    assert agree["block"] > agree["mimic"] + 0.02, agree
    assert agree["block"] > 0.85, agree


def test_units_end_where_the_shapes_match_again(digits_task, digits_cnn):
    x = torch.randn(2, 1, 8, 8)
    pruned = ec.apply("prune.structured", digits_cnn, digits_task, ratio=0.5)
    groups = units(pruned, digits_cnn, x)
    assert [n for g in groups for n in g] == [n for g in units(digits_cnn, digits_cnn, x) for n in g]
    assert len(groups) < len(units(digits_cnn, digits_cnn, x))  # a pruned layer's output is never compared


def test_unlabeled_distillation_with_augmentation_recovers(digits_task, digits_cnn):
    task = _unlabeled(digits_task)
    task.bind_reference(digits_cnn)
    pruned = ec.apply("prune.magnitude", digits_cnn, task, sparsity=0.8, scope="global")
    recovered = ec.apply("recover.kd", pruned, task, teacher=digits_cnn, calib_samples=256, epochs=3, lr=1e-3)
    before, after = (task.evaluate(torch_predictor(m))["output_cosine"] for m in (pruned, recovered))
    assert after > before + 0.02, (before, after)
    zeros = [(m.weight == 0) for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    kept = [(m.weight == 0) for m in recovered.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(torch.equal(a, b) for a, b in zip(zeros, kept))  # pruned weights stay zero
