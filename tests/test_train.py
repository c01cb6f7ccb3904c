"""The shared training loop, the distillation loss, and the distill / finetune(distill) stages."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

from edgecompress.context import StageContext
from edgecompress.tasks import ClassificationTask
from edgecompress.errors import EdgeCompressError
from edgecompress.measure.counts import count_params
from edgecompress.registry import get
from edgecompress.train import accuracy, distillation_loss, train


@pytest.fixture
def teacher(digits_cnn):
    return digits_cnn


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10))


def softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def test_distillation_loss_matches_hand_computation():
    s, t, labels, temp, alpha = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], [[0.5, 1.5, 3.0], [2.0, 0.0, 1.0]], [2, 0], 2.0, 0.3
    kl = ce = 0.0
    for s_row, t_row, label in zip(s, t, labels):
        p, q = softmax([x / temp for x in t_row]), softmax([x / temp for x in s_row])
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) / len(s)  # batch mean of KL(teacher || student)
        ce += -math.log(softmax(s_row)[label]) / len(s)
    got = distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor(labels), temp, alpha)
    assert got.item() == pytest.approx(alpha * temp**2 * kl + (1 - alpha) * ce, rel=1e-5)
    soft_only = distillation_loss(torch.tensor(s), torch.tensor(t), None, temp, alpha)
    assert soft_only.item() == pytest.approx(temp**2 * kl, rel=1e-5)


def test_train_learns_and_is_deterministic(digits_task):
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = tiny_cnn()
        history = train(model, digits_task, epochs=2, lr=0.05, seed=3, progress=False)
        runs.append((model.state_dict(), history))
    (a, hist_a), (b, hist_b) = runs
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in hist_a] == [h["loss"] for h in hist_b]
    assert set(hist_a[0]) == {"epoch", "loss", "val_accuracy", "lr", "seconds"}
    assert hist_a[1]["loss"] < hist_a[0]["loss"] and hist_a[1]["val_accuracy"] > 0.8
    assert hist_a[1]["lr"] < hist_a[0]["lr"]  # cosine schedule


def test_train_keeps_masks_frozen_params_and_batch_cap(digits_task):
    torch.manual_seed(0)
    model = tiny_cnn()
    tprune.l1_unstructured(model[0], "weight", amount=0.5)
    model[4].weight.requires_grad_(False)
    frozen = model[4].weight.clone()
    history = train(model, digits_task, epochs=1, lr=0.05, optimizer="adam", schedule="constant",
                    max_batches=3, progress=False)
    assert int((model[0].weight == 0).sum()) == 36  # half of the 72 conv weights stay masked
    assert torch.equal(model[4].weight, frozen)
    assert history[0]["lr"] == 0.05 and model.training


def test_train_without_labels_needs_a_teacher(digits_task):
    unlabeled = ClassificationTask("x", digits_task.train, digits_task.val, digits_task.test, (1, 8, 8), 10, has_labels=False)
    with pytest.raises(EdgeCompressError, match="no labels"):
        train(tiny_cnn(), unlabeled, epochs=1, lr=0.01, progress=False)
    history = train(tiny_cnn(), unlabeled, epochs=1, lr=0.01, teacher=tiny_cnn(), alpha=1.0, max_batches=2,
                    progress=False)
    assert history[0]["val_accuracy"] is None


def test_distill_stage_trains_a_small_student(teacher, digits_task):
    stage = get("distill")
    ctx = StageContext(task=digits_task, teacher=teacher, progress=False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    config = stage.config(student="mnist_cnn", student_kwargs={"width": 0.25}, epochs=5, lr=0.05)
    student = stage(teacher, config, ctx)
    assert count_params(student) < count_params(teacher) / 10
    assert accuracy(student, digits_task, "test") >= 0.85  # 5 epochs, ~6.5k params
    assert ctx.info["student_params"] == count_params(student) and len(ctx.info["history"]) == 5
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()) and not teacher.training
    with pytest.raises(ValueError, match="unknown zoo model"):
        stage.config(student="resnet7")


def test_finetune_with_distillation_uses_the_teacher(teacher, digits_task):
    stage = get("finetune")
    config = stage.config(epochs=1, lr=0.01, distill={"temperature": 2.0, "alpha": 0.5})
    with pytest.raises(EdgeCompressError, match="teacher"):
        stage(teacher, config, StageContext(task=digits_task, progress=False))
    ctx = StageContext(task=digits_task, teacher=teacher, progress=False)
    tuned = stage(teacher, config, ctx)
    assert ctx.info["distilled"] and ctx.info["val_accuracy_after"] >= 0.9
    assert tuned is not teacher
