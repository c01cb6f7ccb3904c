"""A user's pretrained model and a folder of unlabeled images: label-free stages run end to end from a recipe and
the run reports agreement with the original model; stages that need labels are refused before any work."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import yaml
from clean_errors import expect_clean_error
from PIL import Image
from safetensors.torch import save_file

from edgecompress.data import data_spec, load_task
from edgecompress.errors import EdgeCompressError
from edgecompress.tasks import UnlabeledTask
from edgecompress.tasks.unlabeled import agreement_metrics
from edgecompress.train import train

USER_MODULE = textwrap.dedent('''
    from torch import nn

    class UserNet(nn.Module):
        """A user's own architecture (not from the zoo)."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                          nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(2))
            self.head = nn.Linear(128, 10)

        def forward(self, x):
            return self.head(self.features(x).flatten(1))

    def build():
        return UserNet()
''')


@pytest.fixture(scope="module")
def user_files(tmp_path_factory, digits_task):
    """A pretrained model (module + safetensors weights) and 400 unlabeled digit images as PNG files."""
    root = tmp_path_factory.mktemp("user")
    (root / "usernet_mod.py").write_text(USER_MODULE)
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(root))
    import usernet_mod

    torch.manual_seed(0)
    model = usernet_mod.build()
    train(model, digits_task, epochs=4, lr=0.05, progress=False)
    save_file(model.state_dict(), str(root / "weights.safetensors"))
    images = root / "images"
    images.mkdir()
    for i, x in enumerate(digits_task.train.tensors[0][:400]):
        Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8), mode="L").save(images / f"{i:03d}.png")
    yield root
    mp.undo()


def recipe(root, stages, **extra):
    path = root / f"recipe-{len(list(root.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "unlabeled", "seed": 0,
        "model": {"callable": "usernet_mod:build", "weights": str(root / "weights.safetensors")},
        "data": {"dataset": "folder", "path": str(root / "images"), "input_shape": [1, 8, 8]},
        "stages": stages, "export": {"repeats": 3, "warmup": 1}, **extra}))
    return path


def test_folder_without_class_subfolders_is_unlabeled(user_files):
    task = load_task(data_spec(dataset="folder", path=user_files / "images", input_shape=(1, 8, 8),
                               mean=[0.5], std=[0.25]))
    assert isinstance(task, UnlabeledTask) and not task.has_labels and task.metric == "agreement_top1"
    sizes = [len(task.train), len(task.val), len(task.test)]
    assert sum(sizes) == 400 and min(sizes) >= 40
    assert task.evaluate(lambda x: x.reshape(len(x), -1)) == {}  # nothing to compare with before bind_reference
    x = task.train.tensors[0]
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-6 and x.max() <= (1 - 0.5) / 0.25 + 1e-6  # normalized after [0, 1]


def test_agreement_metrics():
    ref = np.array([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    same = agreement_metrics(ref, ref)
    assert same == pytest.approx({"agreement_top1": 1.0, "top5_overlap": 1.0, "output_cosine": 1.0})
    swapped = agreement_metrics(ref[::-1].copy(), ref)
    assert swapped["agreement_top1"] == 0.0 and swapped["top5_overlap"] == pytest.approx(4 / 5)


@pytest.mark.slow
@pytest.mark.parametrize("stages", [
    [{"method": "prune.magnitude", "sparsity": 0.6, "scope": "global"}, {"method": "recover.mimic", "calib_samples": 64},
     {"method": "quant.ptq", "calib_samples": 64}],
    [{"method": "prune.structured", "ratio": 0.25}, {"method": "recover.bn", "calib_samples": 64},
     {"method": "quant.ptq", "calib_samples": 64}],
], ids=["mimic-ptq", "bn-ptq"])
def test_label_free_stages_run_end_to_end(user_files, tmp_path, stages):
    from typer.testing import CliRunner

    from edgecompress.cli import app

    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", str(recipe(user_files, stages, targets={"max_accuracy_drop": 10})),
                                   "--out", str(out), "--no-progress"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "Agree" in res.output and "Acc %" not in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == {"kind": "unlabeled", "metric": "agreement_top1"}
    base, final = metrics["history"][0]["metrics"], metrics["history"][-1]["metrics"]
    assert "accuracy" not in final
    assert base["agreement_top1"] == 1.0 and base["output_cosine"] > 0.9999  # the FP32 ONNX file = the model
    assert final["agreement_top1"] >= 0.9 and final["top5_overlap"] >= 0.8
    assert metrics["summary"]["metric"] == "agreement_top1"
    assert metrics["summary"]["accuracy_drop_points"] == pytest.approx(100 * (1 - final["agreement_top1"]), abs=1e-6)
    assert metrics["checks"][0] == {"target": "max_accuracy_drop", "wanted": 10.0,
                                    "got": metrics["summary"]["accuracy_drop_points"], "passed": True}
    assert "Agree" in (out / "report.html").read_text()


@pytest.mark.parametrize("stage, words", [
    ({"method": "finetune", "epochs": 1}, ["'finetune' needs labels", "recover.mimic", "alpha 1.0"]),
    ({"method": "prune.structured", "criterion": "taylor"}, ["taylor importance", "l1, l2 and bn_scale"]),
    ({"method": "quant.dqa"}, ["'quant.dqa' needs labels", "ranking: mse"]),
    ({"method": "prune.reconvene"}, ["'prune.reconvene' needs labels"]),
])
def test_stages_that_need_labels_are_refused_before_any_work(user_files, tmp_path, stage, words):
    out = tmp_path / "run"
    expect_clean_error(["run", recipe(user_files, [stage]), "--out", out, "--no-progress"], ["stages[0]", *words])
    assert not out.exists()


def test_zoo_model_on_unlabeled_data_needs_num_classes(user_files, tmp_path):
    path = recipe(user_files, [])
    data = yaml.safe_load(path.read_text())
    data["model"] = {"zoo": "mnist_cnn"}
    path.write_text(yaml.safe_dump(data))
    expect_clean_error(["run", path, "--out", tmp_path / "run", "--no-progress"], ["data.num_classes"])


def test_a_stage_declares_the_task_kinds_it_supports(digits_task):
    from edgecompress.registry import Stage, StageConfig

    only_unlabeled = Stage("test.only_unlabeled", StageConfig, lambda m, c, ctx: m, task_kinds=("unlabeled",))
    with pytest.raises(EdgeCompressError, match="does not work on classification tasks") as err:
        only_unlabeled.check_task(StageConfig(), digits_task)
    assert "it supports: unlabeled" in str(err.value)


def test_report_of_an_unlabeled_run_plots_agreement():
    from edgecompress.report.plots import make_plots
    from edgecompress.report.table import COLUMNS, stage_rows, visible

    entry = {"name": "baseline", "metrics": {"agreement_top1": 1.0, "size_bytes": 2000, "latency_p50_ms": 0.1}}
    final = {"name": "quant.ptq", "metrics": {"agreement_top1": 0.97, "size_bytes": 700, "latency_p50_ms": 0.09}}
    metrics = {"task": {"kind": "unlabeled", "metric": "agreement_top1"}, "history": [entry, final]}
    assert [p.title for p in make_plots(metrics)][:2] == ["Agreement vs size", "Agreement vs latency"]
    shown = [key for key, _ in visible(COLUMNS, stage_rows(metrics))]
    assert "agreement" in shown and "accuracy" not in shown and "f1" not in shown
