"""Accelerator placement, checked on a machine without a GPU: the recipe's ``device`` and ``--device``, their
resolution (a missing GPU is a clean error before any work), which stages may use a GPU, and the pipeline moving
every stage's model and teacher through ``placement.move`` and recording where each stage ran.

Nothing here pretends to have a GPU: CUDA placement itself is exercised by ``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml
from torch import nn

from clean_errors import Sentinel, expect_clean_error
from edgecompress import placement, registry
from edgecompress.errors import EdgeCompressError
from edgecompress.measure.gpu import energy_per_sample, nvml_energy
from edgecompress.pipeline import Pipeline
from edgecompress.recipe import parse_recipe
from edgecompress.registry import StageConfig, register

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="about machines without a CUDA GPU")
CUDA_STAGES = {"finetune", "distill", "prune.lottery", "prune.iterative", "prune.ice", "prune.structured",
               "recover.bn", "recover.bias", "recover.block", "recover.kd", "prune.llm", "prune.composite",
               "hw.adapt", "factorize.lowrank", "hw.separable", "search.nas"}


def small(device: str | None = None, **extra) -> dict:
    recipe = {"name": "small", "seed": 1, "data": {"dataset": "digits"},
              "model": {"zoo": "mnist_cnn", "kwargs": {"width": 0.5}, "pretrain": {"epochs": 1, "batch_size": 32}},
              "stages": [{"method": "prune.magnitude", "sparsity": 0.5},
                         {"method": "finetune", "epochs": 1, "distill": {"alpha": 0.5}}],
              "export": {"repeats": 3, "warmup": 1}, **extra}
    return recipe if device is None else {**recipe, "device": device}


# -- the recipe's device ---------------------------------------------------------------------------------------


def test_device_defaults_to_cpu_accepts_gpu_indices_and_round_trips():
    assert parse_recipe(small()).device == "cpu"
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:7"):
        recipe = parse_recipe(small(device))
        assert recipe.device == device
        assert parse_recipe(yaml.safe_load(recipe.to_yaml())).device == device


def test_bad_device_names_the_key_and_the_choices():
    with pytest.raises(EdgeCompressError) as err:
        parse_recipe(small("gpu"))
    assert "device" in str(err.value) and "'gpu' is not a device" in str(err.value)
    assert "auto" in str(err.value) and "cuda:N" in str(err.value)


def test_fingerprint_leaves_the_device_out_so_a_run_resumes_elsewhere():
    cpu, cuda = parse_recipe(small("cpu")), parse_recipe(small("cuda"))
    assert cpu.to_yaml() != cuda.to_yaml() and cpu.fingerprint() == cuda.fingerprint()
    assert cpu.with_device("cuda:1").device == "cuda:1" and cpu.device == "cpu"
    with pytest.raises(EdgeCompressError, match="--device"):
        cpu.with_device("gpu")


# -- resolution --------------------------------------------------------------------------------------------------


@no_gpu
def test_auto_and_cpu_resolve_to_the_cpu_here():
    assert placement.resolve_device("auto") == placement.resolve_device("cpu") == torch.device("cpu")


@no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_says_so_and_suggests_auto_or_cpu(device):
    with pytest.raises(EdgeCompressError) as err:
        placement.resolve_device(device)
    assert err.value.where == "device" and device in err.value.what and "has none" in err.value.what
    assert "device: auto" in err.value.fix and "device: cpu" in err.value.fix


# -- which stages may use a GPU ----------------------------------------------------------------------------------


class PlainConfig(StageConfig):
    pass


def plain(model, config, ctx):
    """Test-only stage: it passes the model through."""
    return model


def test_stages_run_on_the_cpu_unless_they_register_cuda(monkeypatch):
    monkeypatch.setattr(registry, "_STAGES", {s.name: s for s in registry.all_stages()})  # registered here only, for this test
    register("test.device_default", PlainConfig)(plain)
    stage = registry.get("test.device_default")
    assert stage.devices == ("cpu",)
    assert stage.device_for(torch.device("cuda", 0)) == torch.device("cpu")
    assert registry.get("finetune").device_for(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert registry.get("finetune").device_for(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="must include 'cpu'"):
        register("test.device_gpu_only", PlainConfig, devices=("cuda",))(plain)


def test_the_stages_that_declare_cuda():
    assert {s.name for s in registry.all_stages() if "cuda" in s.devices} == CUDA_STAGES


# -- the pipeline --------------------------------------------------------------------------------------------------


@no_gpu
def test_cli_cuda_without_gpu_is_a_clean_error_before_any_file_is_written(tmp_path):
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(small("cuda")))
    (tmp_path / "cpu.yaml").write_text(yaml.safe_dump(small("cpu")))
    sentinel = Sentinel(tmp_path)
    for args in (["gpu.yaml"], ["cpu.yaml", "--device", "cuda"]):
        out = expect_clean_error(["run", tmp_path / args[0], *args[1:], "--out", tmp_path / "run"],
                                 ["'cuda' needs a CUDA GPU", "device: auto", "device: cpu"])
        assert "internal error" not in out
    expect_clean_error(["run", tmp_path / "cpu.yaml", "--device", "gpu", "--out", tmp_path / "run"],
                       ["--device", "'gpu' is not a device"])
    sentinel.assert_untouched()


@no_gpu
@pytest.mark.slow
def test_cli_device_override_auto_runs_every_stage_on_the_cpu(tmp_path):
    from clean_errors import runner
    from edgecompress.cli import app

    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(small("cuda")))
    res = runner.invoke(app, ["run", str(tmp_path / "gpu.yaml"), "--device", "auto", "--out", str(tmp_path / "run"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [h["report"]["device"] for h in history] == ["cpu"] * 3
    assert not any(k.startswith("gpu_") for k in history[-1]["metrics"])  # GPU metrics only on a CUDA run


@pytest.mark.slow
def test_pipeline_moves_each_stage_model_and_teacher_through_the_placement_helper(tmp_path, digits_task,
                                                                                  monkeypatch):
    """A ``device: cuda`` recipe whose device resolves to the CPU (monkeypatched: no GPU is pretended), with
    ``placement.move`` watched: per stage the teacher and the input model go to the stage's device, the result
    comes back to the CPU, and every report says where the stage ran."""
    asked: list[str] = []
    moves: list[tuple[torch.device, nn.Module]] = []  # the models are kept: identities stay unique
    real_move = placement.move

    def resolve(spec: str) -> torch.device:
        asked.append(spec)
        return torch.device("cpu")

    def watched(model: nn.Module, device: torch.device) -> nn.Module:
        moves.append((device, model))
        return real_move(model, device)

    monkeypatch.setattr(placement, "resolve_device", resolve)
    monkeypatch.setattr(placement, "move", watched)
    result = Pipeline(parse_recipe(small("cuda")), tmp_path / "run", task=digits_task, progress=False,
                      report=False).run()
    assert asked == ["cuda"]
    assert [h["report"]["device"] for h in result.history] == ["cpu"] * 3
    assert all(device == torch.device("cpu") for device, _ in moves)
    assert len(moves) in (6, 8)  # pretraining (to the device and back) unless cached, then 2 stages x 3 moves
    stages = [moves[-6:-3], moves[-3:]]  # per stage: the teacher, the stage's copy of the model, its result
    assert stages[0][0][1] is stages[1][0][1]  # the same frozen teacher is placed for every stage
    assert all(stage[1][1] is not stage[0][1] for stage in stages)  # a copy of the model, never the teacher
    assert not any(k.startswith("gpu_") for k in result.history[-1]["metrics"])


# -- GPU measurement helpers that need no GPU ----------------------------------------------------------------------


def test_energy_per_sample_divides_the_counter_delta_by_the_samples_run():
    counter = iter([1000.0, 1600.0])
    calls = []

    def run() -> int:
        calls.append(1)
        return 4

    mj = energy_per_sample(lambda: next(counter), run, seconds=0.0)
    assert len(calls) == 1 and mj == pytest.approx(600.0 / 4)


def test_nvml_energy_without_nvidia_ml_py_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    result = nvml_energy(nn.Identity(), torch.zeros(1), torch.device("cpu"), 0.0)
    assert result == {"gpu_energy_source": "not measured: nvidia-ml-py (pynvml) is not installed"}
