"""Conformance of every registered stage: documented, runs with its defaults on a tiny model and task, leaves its
input untouched, returns the right type and reports JSON-serialisable info.

The cases come from ``registry.all_stages()``, so a newly registered stage is checked without editing this file.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from edgecompress import registry, zoo
from edgecompress.context import StageContext, StageMeter, StageOutput
from edgecompress.settings import ExportSettings

# Stages whose default config costs more than ~10 s here (2 cores, one torch thread): marked `slow`, so only the full
# suite runs them. Keep their default config; put the measured seconds in the value, e.g. {"prune.lottery": 12.0}.
# Measured alone on digits + mnist_cnn: quant.qat 3.0-3.9 s, prune.lottery 2.2-2.4, distill 1.9-2.2, prune.ice 1.5-1.7,
# quant.mixed 0.8-0.9, prune.iterative 0.7-0.8, finetune 0.5-0.7, prune.reconvene 0.5-0.6, quant.act 0.6 (with the
# ResNet's training), quant.dqa 0.3, quant.weight 0.2-0.3, quant.dynamic 0.2, quant.ptq 0.1, the rest < 0.05 s.
# Under the load of a parallel suite run they take 2-5x longer.
SLOW_STAGES: dict[str, float] = {"search.nas": 32.0}  # 24 candidates trained and timed, on a loaded machine

# Stages that, with their default config, work on residual blocks (quant.act / quant.dqa quantize every
# BasicBlock/Bottleneck/InvertedResidual output when `layers` is empty) and so refuse a plain CNN: like a task kind
# a stage does not support, a model without those blocks is out of scope, so they get a tiny ResNet-20 instead.
NEEDS_RESIDUAL_BLOCKS = {"quant.act", "quant.dqa"}


def _case(stage: registry.Stage):
    marks = [pytest.mark.slow] if stage.name in SLOW_STAGES else []
    return pytest.param(stage, id=stage.name, marks=marks)


STAGES = [_case(stage) for stage in registry.all_stages()]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model: nn.Module, reference: dict[str, torch.Tensor], what: str) -> None:
    state = model.state_dict()
    assert state.keys() == reference.keys(), f"{what}: parameters/buffers added or removed in place"
    changed = [k for k, v in state.items() if v.dtype != reference[k].dtype or not torch.equal(v, reference[k])]
    assert not changed, f"{what} was modified in place: {changed}"


@pytest.fixture(scope="module")
def tiny_resnet(digits_task):
    """ResNet-20 at width 0.25 trained 2 epochs on digits (~2 s), for stages that need residual blocks."""
    from edgecompress.train import train

    torch.manual_seed(0)
    model = zoo.build("resnet20", digits_task.input_shape, digits_task.num_classes, width=0.25)
    train(model, digits_task, epochs=2, lr=0.05, progress=False)
    return model.eval()


@pytest.mark.parametrize("stage", STAGES)
def test_stage_is_documented(stage):
    assert stage.summary, f"{stage.name}: the stage function has no docstring (its first paragraph is the summary)"
    assert stage.task_kinds, f"{stage.name}: declares no task kind it works on"
    undocumented = [name for name, field in stage.config.model_fields.items()
                    if not (field.description or "").strip()]
    assert not undocumented, f"{stage.name}: config fields without a description: {undocumented}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_runs_with_defaults(stage, request, digits_task, digits_cnn, tmp_path):
    task = digits_task
    if task.kind not in stage.task_kinds:
        pytest.skip(f"{stage.name} does not work on {task.kind} tasks")
    config = stage.config()  # the defaults, unchanged: "runs with its defaults" is the point
    if config.labels_needed() and not task.has_labels:
        pytest.skip(f"{stage.name} needs labels")
    reference = request.getfixturevalue("tiny_resnet") if stage.name in NEEDS_RESIDUAL_BLOCKS else digits_cnn

    # The pipeline hands each stage a deepcopy, but a stage must still not touch its input: give it a private copy
    # of the shared fixture (so a failure cannot corrupt other tests) and compare it afterwards with a snapshot.
    model = copy.deepcopy(reference)
    teacher = copy.deepcopy(reference).eval().requires_grad_(False)  # as the pipeline freezes it
    before = _state(reference)
    ctx = StageContext(task=task, teacher=teacher, seed=0, workdir=tmp_path / "stage", progress=False,
                       export=ExportSettings(repeats=2, warmup=0))
    torch.manual_seed(ctx.seed)
    with StageMeter(task) as meter:  # as Pipeline._run_stage measures every stage
        result = stage(model, config, ctx)
    report = meter.report(ctx, config.labels_needed() is not None)

    _assert_same_state(model, before, f"{stage.name}: the input model")
    _assert_same_state(teacher, before, f"{stage.name}: the teacher")

    if stage.produces_artifact:
        assert isinstance(result, StageOutput), f"{stage.name} produces the artifact but returned {type(result)}"
        assert result.artifact is not None, f"{stage.name} produces the artifact but returned none"
        missing = [str(f) for f in result.artifact.files if not f.is_file() or f.stat().st_size == 0]
        assert not missing, f"{stage.name}: artifact files missing or empty: {missing}"
        x = task.example_inputs(1)
        out = result.artifact.runner()(x.numpy())
        assert out.shape == (1, task.num_classes), f"{stage.name}: the artifact's output has shape {out.shape}"
    else:
        assert isinstance(result, nn.Module | StageOutput), f"{stage.name} returned {type(result)}"
        if isinstance(result, StageOutput):
            assert result.artifact is None, f"{stage.name} returned an artifact without produces_artifact=True"
    out_model = result.model if isinstance(result, StageOutput) else result
    assert isinstance(out_model, nn.Module)
    with torch.no_grad():
        logits = out_model.eval()(task.example_inputs(2))
    assert logits.shape == (2, task.num_classes), f"{stage.name}: the returned model's output has shape {logits.shape}"

    try:  # ctx.info goes into state.json and the report as it is
        json.dumps(ctx.info)
    except (TypeError, ValueError) as err:
        pytest.fail(f"{stage.name}: ctx.info is not JSON-serialisable: {err}")

    # --- reports the typed fields -------------------------------------------------------------------------------
    assert report.wall_seconds >= 0 and report.cpu_seconds >= 0 and report.flops >= 0  # a no-op may take < 1 us
    if config.labels_needed() is None:
        assert report.labels_used == 0, f"{stage.name}: a label-free configuration counted labels"
    else:
        assert report.labels_used > 0 and report.unlabeled_samples == 0, (
            f"{stage.name} needs labels ({config.labels_needed()}) but read no labelled sample: {report}")
