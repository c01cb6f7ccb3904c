"""dynamic.early_exit: split points, exits firing by their calibrated thresholds, the exported segments giving the
PyTorch model's predictions in ONNX Runtime, checkpoint rebuild, and clear errors for unusable backbones."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.checkpoint import load_model, save_model
from edgecompress.context import StageContext
from edgecompress.dynamic.heads import confidence, predict
from edgecompress.dynamic.split import cut_points, segments, trace
from edgecompress.errors import EdgeCompressError
from edgecompress.registry import get
from edgecompress.runtimes import Artifact
from edgecompress.settings import ExportSettings


def run(model, task, tmp_path, **config):
    stage = get("dynamic.early_exit")
    ctx = StageContext(task=task, teacher=model, progress=False, workdir=tmp_path,
                       export=ExportSettings(repeats=2, warmup=0))
    config = {"epochs": 3, "latency_samples": 20, "latency_rounds": 1, **config}
    return stage(model, stage.config(**config), ctx), ctx


@pytest.fixture(scope="module")
def exited(digits_task, digits_cnn, tmp_path_factory):
    return run(digits_cnn, digits_task, tmp_path_factory.mktemp("exits"))


def test_segments_compose_to_the_model(digits_cnn, digits_task):
    gm = trace(digits_cnn, "test")
    cuts = [n.name for n in cut_points(gm)]
    assert "features_3" in cuts and "classifier" not in cuts  # after the first max-pool; the output is no cut
    x, h = digits_task.example_inputs(8), digits_task.example_inputs(8)
    for part in segments(gm, ["features_3", "features_10"]):
        h = part(h)
    with torch.no_grad():
        assert torch.equal(h, digits_cnn(x))


def test_exits_fire_by_threshold_and_artifact_matches_pytorch(exited, digits_task):
    out, ctx = exited
    info, model = ctx.info, out.model
    assert len(info["split_points"]) == 2 and len(info["thresholds"]) == 2
    parts, thresholds = model.exit_heads.segments(model), model.exit_heads.thresholds
    x, y = digits_task.split("test").tensors
    logits, which = predict(parts, thresholds, x)
    # every sample left at the first exit whose confidence reached its threshold
    h = x
    for k, part in enumerate(parts[:-1]):
        h, exit_logits = part(h) if k == 0 else part(h)
        conf = confidence(exit_logits)
        left_earlier = which < k
        assert bool((conf[which == k] >= thresholds[k]).all())
        assert bool((conf[(which > k) & ~left_earlier] < thresholds[k]).all())
    assert (which < len(parts) - 1).any(), "no sample left early"
    # the deployed artifact (ONNX segments + runner) gives the same predictions and exits
    ort_logits, ort_which = out.artifact.runner().run(x.numpy())
    assert np.array_equal(ort_which, which.numpy())
    assert np.array_equal(ort_logits.argmax(1), logits.argmax(1).numpy())
    assert np.abs(ort_logits - logits.numpy()).max() < 1e-3
    # calibration: on validation data the cascade loses at most max_accuracy_drop against the full network
    full_val = float((model(digits_task.split("val").tensors[0]).argmax(1) ==
                      digits_task.split("val").tensors[1]).float().mean())
    assert info["val_accuracy"] >= full_val - 0.01 - 1e-9
    assert info["test_accuracy"] >= info["test_accuracy_full"] - 0.05 and sum(info["test_exit_share"]) == pytest.approx(1)
    assert info["latency_ms_per_sample"] > 0 and info["speedup"] > 0


def test_checkpoint_rebuilds_heads_and_thresholds(exited, digits_cnn, digits_task, tmp_path):
    out, _ = exited
    save_model(out.model, tmp_path)
    back = load_model(tmp_path, lambda arch: copy.deepcopy(digits_cnn))
    assert back.exit_heads.thresholds == out.model.exit_heads.thresholds
    x = digits_task.split("test").tensors[0][:64]
    a = predict(back.exit_heads.segments(back), back.exit_heads.thresholds, x)
    b = predict(out.model.exit_heads.segments(out.model), out.model.exit_heads.thresholds, x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    art, shape = Artifact.from_json(out.artifact.to_json()), None
    from edgecompress.runtimes.exits import validate

    art, shape = validate(out.artifact.path)
    assert shape == tuple(digits_task.input_shape) and len(art.extra_files) == 3


def test_fixed_thresholds_above_one_never_fire(digits_cnn, digits_task, tmp_path):
    out, ctx = run(digits_cnn, digits_task, tmp_path, split_points=["features.6"], thresholds=[1.5], epochs=1)
    assert ctx.info["split_points"] == ["features_6"] and ctx.info["test_exit_share"] == [0.0, 1.0]
    assert ctx.info["test_accuracy"] == ctx.info["test_accuracy_full"]


class Branchy(nn.Module):
    """Every layer's output is needed at the end: no point carries everything the rest needs."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 10), nn.Linear(64, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.a(x) + self.b(x)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) if x.sum() > 0 else -self.fc(x.flatten(1))


def test_unusable_backbones_and_bad_points(digits_cnn, digits_task, tmp_path):
    for model, words in ((Branchy(), "no usable split points"), (DataDependent(), "cannot trace")):
        with pytest.raises(EdgeCompressError, match=words):
            run(model, digits_task, tmp_path)
    with pytest.raises(EdgeCompressError, match="not usable as split points") as err:
        run(digits_cnn, digits_task, tmp_path, split_points=["features.99"])
    assert "features_3" in err.value.fix
    with pytest.raises(EdgeCompressError, match="1 thresholds for 2 exits"):
        run(digits_cnn, digits_task, tmp_path, thresholds=[0.9])


@pytest.mark.slow
def test_recipe_factorizes_then_exits_end_to_end(tmp_path, digits_task):
    from edgecompress.pipeline import Pipeline
    from edgecompress.recipe import parse_recipe

    recipe = parse_recipe({
        "name": "lowrank-exit", "seed": 1,
        "model": {"zoo": "mnist_cnn", "pretrain": {"epochs": 4, "batch_size": 32}},
        "data": {"dataset": "digits"},
        "stages": [{"method": "factorize.lowrank", "target_macs_ratio": 0.6, "recovery": {"epochs": 2}},
                   {"method": "dynamic.early_exit", "epochs": 3, "latency_samples": 20, "latency_rounds": 1}],
        "export": {"repeats": 5, "warmup": 1}, "targets": {"max_accuracy_drop": 10.0},
    })
    result = Pipeline(recipe, tmp_path / "run", task=digits_task, progress=False, report=False).run()
    final = result.history[-1]
    assert final["metrics"]["format"] == "onnx_exits" and result.artifact.path.name == "model.exits"
    assert final["metrics"]["macs"] <= 0.6 * result.history[0]["metrics"]["macs"]
    assert final["metrics"]["accuracy"] >= final["info"]["test_accuracy_full"] - 0.05
    x = digits_task.split("test").tensors[0][:50]
    logits, which = predict(result.model.exit_heads.segments(result.model), result.model.exit_heads.thresholds, x)
    ort_logits, ort_which = result.artifact.runner().run(x.numpy())  # the copy in artifacts/, from the reloaded model
    assert np.array_equal(ort_which, which.numpy()) and np.array_equal(ort_logits.argmax(1), logits.argmax(1).numpy())
