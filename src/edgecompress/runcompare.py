"""One model in every compared runtime side by side (ONNX Runtime ``.onnx`` and ExecuTorch/XNNPACK ``.pte``), and
the two run-level uses of that: ``export.format: fastest`` (:func:`resolve_fastest`, called by the pipeline) and
``bench RUN_DIR`` (:func:`compare_run`).

``compare_runtimes`` exports the model (and, on request, its static INT8 version from ``quant.ptq``) in each
runtime's format and measures every artifact the same way (:func:`edgecompress.measure.measure_artifact`):
accuracy in its runtime, bytes on disk, latency p50/p95 and throughput in a fresh benchmark process with the same
threads and batch. This module sits above ``measure`` and ``runtimes``: it builds models, tasks and INT8 artifacts
from recipes and stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.measure import measure_artifact
from edgecompress.runtimes import Artifact, all_runtimes, export, get
from edgecompress.settings import ExportSettings
from edgecompress.tasks import Task


def compared_runtimes() -> list[str]:
    """The runtimes a recipe can choose between with ``export.format: fastest``."""
    return [r.name for r in all_runtimes() if r.compared]


def runtime_settings(settings: ExportSettings, runtime: str) -> ExportSettings:
    """``settings`` with the format and runtime of ``runtime`` (threads, batch, repeats kept)."""
    return settings.model_copy(update={"format": get(runtime).format, "runtime": runtime})


def runtime_artifacts(model: nn.Module, task: Task, settings: ExportSettings, out_dir: Path, runtime: str,
                      int8: bool) -> list[Artifact]:
    """The FP32 artifact of ``model`` for ``runtime`` and, with ``int8``, the default ``quant.ptq`` artifact."""
    from edgecompress import registry
    from edgecompress.context import StageContext

    rt_settings, work = runtime_settings(settings, runtime), Path(out_dir) / runtime
    artifacts = [export(model, task.example_inputs(1), work, rt_settings)]
    if int8:
        stage = registry.get("quant.ptq")
        ctx = StageContext(task=task, workdir=work, export=rt_settings, progress=False)
        artifacts.append(stage(model, stage.config(), ctx).artifact)
    return artifacts


def compare_runtimes(model: nn.Module, task: Task, settings: ExportSettings, out_dir: Path, *,
                     runtimes: Sequence[str] | None = None, int8: bool = False, accuracy: bool = True,
                     throughput_batch: int | None = None) -> list[dict[str, Any]]:
    """One row per (runtime, precision): ``measure_artifact`` of each artifact, with the same settings.
    ``runtimes`` defaults to the compared ones."""
    return [measure_artifact(a, task, settings, accuracy=accuracy, throughput_batch=throughput_batch)
            for runtime in (compared_runtimes() if runtimes is None else runtimes)
            for a in runtime_artifacts(model, task, settings, out_dir, runtime, int8)]


def resolve_fastest(model: nn.Module, task: Task, settings: ExportSettings,
                    out_dir: Path) -> tuple[ExportSettings, dict[str, Any]]:
    """``export.format: fastest`` -> the format whose runtime runs ``model`` with the lowest p50 latency (FP32,
    the recipe's threads and batch). Returns the resolved settings and the record of every measurement."""
    rows = compare_runtimes(model, task, settings, out_dir, accuracy=False)
    best = min(rows, key=lambda row: row["latency_p50_ms"])
    choice = {"chosen": best["runtime"], "format": best["format"],
              "by": f"baseline p50 latency, batch {settings.batch}, {settings.threads} thread(s)", "candidates": rows}
    return runtime_settings(settings, best["runtime"]), choice


def compare_run(run_dir: Path, settings: ExportSettings, *, trust_pickle: bool = False) -> list[dict[str, Any]]:
    """The run's own final artifact (``artifacts/``, the file the run measured) first, then the final model
    re-exported for comparison: FP32 in the artifact's runtime when the artifact is INT8, and FP32 (plus default
    ``quant.ptq`` INT8 when the artifact is INT8) in every other compared runtime. Each row's ``source`` says which
    it is (a model with token inputs: its own artifact only). Re-exports go to ``run_dir/runtime-compare``. A model that came from a callable, an archive or a pickle
    is rebuilt from the run's recipe (``trust_pickle`` for a pickle)."""
    from edgecompress import baseline, rundir
    from edgecompress.checkpoint import load_model
    from edgecompress.data.datasets import load_task
    from edgecompress.recipe import load_recipe

    run_dir = Path(run_dir)
    final = _finished_run(run_dir)["history"][-1]["artifact"]
    recipe = load_recipe(run_dir / rundir.RECIPE)
    task = load_task(recipe.data)

    def build(arch: dict | None) -> nn.Module:
        """The architecture the final checkpoint was saved from: a zoo descriptor, else the recipe's model."""
        if arch is not None:
            return baseline.build_from_arch(arch)
        return baseline.load(recipe, task, trust_pickle=trust_pickle, train=False)

    own = _run_artifact(run_dir, final)
    rows = [{**measure_artifact(own, task, settings), "source": "the run's artifact"}]
    model = load_model(run_dir / "artifacts", build).eval()
    out, int8 = run_dir / "runtime-compare", own.precision == "int8"
    if int8:
        rows += [{**row, "source": "re-export (FP32)"}
                 for row in compare_runtimes(model, task, settings, out, runtimes=[own.runtime])]
    if isinstance(task.example_inputs(1), dict):  # token inputs: exported to ONNX only (see llm.export)
        return rows
    others = [name for name in compared_runtimes() if name != own.runtime]
    return rows + [{**row, "source": "re-export" + (" (default quant.ptq)" if row["precision"] == "int8" else "")}
                   for row in compare_runtimes(model, task, settings, out, runtimes=others, int8=int8)]


def _run_artifact(run_dir: Path, final: dict[str, Any]) -> Artifact:
    """The final artifact as the run copied it into ``run_dir/artifacts`` (checked to exist)."""
    folder = run_dir / "artifacts"
    artifact = Artifact.from_json({**final, "path": str(folder / Path(final["path"]).name),
                                   "extra_files": [str(folder / Path(p).name) for p in final.get("extra_files", [])]})
    missing = [str(f) for f in artifact.files if not f.is_file()]
    if missing:
        raise EdgeCompressError(f"the run's final artifact is missing: {', '.join(missing)}", where=str(run_dir),
                                fix="rerun the recipe (or restore artifacts/)")
    return artifact


def _finished_run(run_dir: Path) -> dict[str, Any]:
    """The metrics.json of a finished run in ``run_dir`` (a history and a summary, next to artifacts/); any other
    directory raises an EdgeCompressError."""
    from edgecompress import rundir

    metrics = run_dir / rundir.METRICS
    doc = rundir.read_json(metrics) if metrics.is_file() and (run_dir / "artifacts").is_dir() else None
    if not isinstance(doc, dict) or not doc.get("history") or "summary" not in doc:
        raise EdgeCompressError("not a finished edgecompress run (no metrics.json with a history and a summary "
                                "next to artifacts/)", where=str(run_dir),
                                fix="pass the directory of a finished `edgecompress run`, or an exported model file")
    return doc
