"""`edgecompress recipes`, `recipes show`, `validate`, and `inspect` with a recipe name or a weights-only file."""

from __future__ import annotations

import torch
import yaml
from typer.testing import CliRunner

from edgecompress import packaged, zoo
from edgecompress.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def test_recipes_lists_every_packaged_recipe_with_its_description():
    res = runner.invoke(app, ["recipes"], env=WIDE)
    assert res.exit_code == 0, res.output
    for name in packaged.names():
        assert name in res.output
    assert "A few-second recipe on sklearn digits: prune, fine-tune with distillation, INT8." in res.output
    assert packaged.description("mimic-mnist").startswith("Label-free recovery: 80% global magnitude pruning")


def test_recipes_show_prints_loadable_yaml_and_names_unknown_ones():
    res = runner.invoke(app, ["recipes", "show", "digits-quick"])
    assert res.exit_code == 0
    assert res.output == packaged.text("digits-quick") and yaml.safe_load(res.output)["name"] == "digits-quick"
    res = runner.invoke(app, ["recipes", "show", "nope"])
    assert res.exit_code == 2 and "no packaged recipe 'nope'" in res.output and "digits-quick" in res.output


def test_validate_reports_every_error_at_once(tmp_path):
    res = runner.invoke(app, ["validate", "default"])
    assert res.exit_code == 0 and "a valid recipe (3 stages: prune.structured, finetune, quant.ptq)" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  - method: prune.structurd\n  - method: finetune\n    epochs: -1\n"
                   "targets: {max_accuracy_drop: -2}\n")
    res = runner.invoke(app, ["validate", str(bad)], env=WIDE)
    assert res.exit_code == 2
    for text in ("bad.yaml:3 stages[0].method", "did you mean 'prune.structured'", "bad.yaml:5 stages[1].epochs",
                 "bad.yaml:6 targets.max_accuracy_drop"):
        assert text in res.output, text


def test_inspect_takes_a_packaged_recipe_name():
    res = runner.invoke(app, ["inspect", "digits-quick"], env=WIDE)
    assert res.exit_code == 0, res.output
    assert "input (1, 8, 8)" in res.output and "final classifier" in res.output


def test_inspect_weights_without_arch_says_pass_arch(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(zoo.build("mnist_cnn", (1, 8, 8), 10).state_dict(), path)
    res = runner.invoke(app, ["inspect", str(path), "--input-shape", "1,8,8"], env=WIDE)
    assert res.exit_code == 2 and "pass --arch" in res.output and "pickle" not in res.output
    res = runner.invoke(app, ["inspect", str(path), "--input-shape", "1,8,8", "--arch", "mnist_cnn"], env=WIDE)
    assert res.exit_code == 0, res.output
