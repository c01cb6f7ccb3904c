"""An untrained baseline is called out: a loud warning at chance level, and an accuracy gain beyond noise is
"the baseline was not trained" instead of a pass. The README's Python API example trains its model first."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

import edgecompress
from edgecompress.recipe import Targets, parse_recipe
from edgecompress.report import checks_table
from edgecompress.summary import accuracy_noise_points, chance_warning, checks

README = Path(__file__).resolve().parents[1] / "README.md"


def _history(base: float, final: float) -> list[dict]:
    return [{"metrics": {"accuracy": base}}, {"metrics": {"accuracy": final}}]


def test_chance_level_is_judged_against_the_noise_of_the_test_split():
    assert accuracy_noise_points(0.5, 0.5, 1000) == pytest.approx(6.708, abs=1e-3)
    assert "chance level: 10.4% on 1,000 test samples" in chance_warning(0.104, 0.11, 1000)
    assert "edgecompress.train(model, task" in chance_warning(0.0, 0.11, 1000)
    assert chance_warning(0.20, 0.11, 1000) is None and chance_warning(0.97, 0.11, 1000) is None
    assert chance_warning(0.15, 0.11, 1000) is not None  # 4 points above chance is within the noise


def test_a_gain_beyond_noise_is_not_a_pass():
    targets = Targets(max_accuracy_drop=1.0)
    untrained = checks(_history(0.10, 0.58), targets, samples=1000)[0]
    assert untrained["passed"] is None and untrained["got"] == -48.0
    assert untrained["note"].startswith("the baseline was not trained: the final model is 48.0 points more accurate")
    assert checks(_history(0.970, 0.975), targets, samples=1000)[0] == {
        "target": "max_accuracy_drop", "wanted": 1.0, "got": -0.5, "passed": True}  # within noise: a pass
    assert checks(_history(0.10, 0.58), targets)[0]["passed"] is True  # no test size known: as before


def test_the_targets_table_says_not_judged():
    metrics = {"checks": checks(_history(0.10, 0.58), Targets(max_accuracy_drop=1.0), samples=1000)}
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(checks_table(metrics))
    text = " ".join(console.export_text().split())
    assert "not judged" in text and "PASS" not in text and "the baseline was not trained" in text


def test_train_is_public_and_callable_in_either_import_order(digits_task):
    from edgecompress import zoo
    from edgecompress.train import train as function

    model = zoo.build("mnist_cnn", digits_task.input_shape, digits_task.num_classes, width=0.5)
    assert "train" in edgecompress.__all__ and callable(edgecompress.train)
    history = edgecompress.train(model, digits_task, epochs=1, lr=0.05, progress=False, max_batches=2)
    assert len(history) == 1 and callable(function)


def test_compressing_an_untrained_model_warns_and_is_not_judged(tmp_path, digits_task, capsys):
    from edgecompress import zoo

    model = zoo.build("mnist_cnn", digits_task.input_shape, digits_task.num_classes, width=0.5)
    recipe = parse_recipe({"name": "untrained", "stages": [{"method": "finetune", "epochs": 2, "lr": 0.05}],
                           "export": {"repeats": 2, "warmup": 0}, "targets": {"max_accuracy_drop": 1.0}})
    result = edgecompress.compress(model, digits_task, recipe, out=tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert "warning:" in err and "the baseline is at chance level" in err
    assert result.summary["baseline_warning"].startswith("the baseline is at chance level")
    assert result.checks[0]["passed"] is None and "not trained" in result.checks[0]["note"]
    html = result.report.read_text()
    assert "Not judged: the baseline was not trained" in html and "PASS" not in html


def _readme_api_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_api_example_verbatim_trains_and_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_api_example(), "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    result = namespace["result"]
    base = result.history[0]["metrics"]["accuracy"]
    assert base > 0.9 and result.summary["baseline_warning"] is None
    assert -2.0 < result.summary["accuracy_drop_points"] < 5.0
    assert all("note" not in c for c in result.checks)
    assert (tmp_path / "deploy" / "model.onnx").is_file()
