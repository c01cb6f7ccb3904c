"""One model in every compared runtime side by side (ONNX Runtime ``.onnx`` and ExecuTorch/XNNPACK ``.pte``), and
the two run-level uses of that: ``export.format: fastest`` (:func:`resolve_fastest`, called by the pipeline) and
``bench RUN_DIR`` (:func:`compare_run`).

``compare_runtimes`` exports the model (and, on request, its static INT8 version from ``quant.ptq``) in each
runtime's format and measures every artifact the same way (:func:`edgecompress.measure.measure_artifact`):
accuracy in its runtime, bytes on disk, latency p50/p95 and throughput in a fresh benchmark process with the same
threads and batch; the speed-ups between them come from timing them side by side in interleaved rounds. This
module sits above ``measure`` and ``runtimes``: it builds models, tasks and INT8 artifacts from recipes and
stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.measure import measure_artifact
from edgecompress.measure.latency import interleaved, speedup
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


def measure_side_by_side(artifacts: Sequence[Artifact], task: Task, settings: ExportSettings, *,
                         accuracy: bool = True, throughput_batch: int | None = None) -> list[dict[str, Any]]:
    """One row per artifact (``measure_artifact``, the same settings), and with several, each one's ``speedup``
    over the first: artifacts timed side by side in interleaved rounds (median per-round ratio and quartiles)."""
    rows = [measure_artifact(a, task, settings, accuracy=accuracy, throughput_batch=throughput_batch)
            for a in artifacts]
    if len(artifacts) > 1:
        per_round = interleaved(artifacts, task.input_shape, threads=settings.threads, batch=settings.batch,
                                rounds=settings.rounds, repeats=settings.repeats, warmup=settings.warmup,
                                vocab_size=getattr(task, "vocab_size", None))
        for row, ms in zip(rows, per_round):
            row["speedup"] = speedup(per_round[0], ms)
    return rows


def compare_runtimes(model: nn.Module, task: Task, settings: ExportSettings, out_dir: Path, *,
                     runtimes: Sequence[str] | None = None, int8: bool = False, accuracy: bool = True,
                     throughput_batch: int | None = None) -> list[dict[str, Any]]:
    """One row per (runtime, precision), measured side by side (:func:`measure_side_by_side`). ``runtimes``
    defaults to the compared ones."""
    artifacts = [a for runtime in (compared_runtimes() if runtimes is None else runtimes)
                 for a in runtime_artifacts(model, task, settings, out_dir, runtime, int8)]
    return measure_side_by_side(artifacts, task, settings, accuracy=accuracy, throughput_batch=throughput_batch)


def resolve_fastest(model: nn.Module, task: Task, settings: ExportSettings,
                    out_dir: Path) -> tuple[ExportSettings, dict[str, Any]]:
    """``export.format: fastest`` -> the format whose runtime runs ``model`` fastest, timed side by side (FP32,
    the recipe's threads and batch). Returns the resolved settings and the record of every measurement."""
    rows = compare_runtimes(model, task, settings, out_dir, accuracy=False)
    best = max(rows, key=lambda row: row.get("speedup", {}).get("median", 1.0))
    choice = {"chosen": best["runtime"], "format": best["format"],
              "by": f"baseline latency timed side by side ({settings.rounds} interleaved rounds), batch "
                    f"{settings.batch}, {settings.threads} thread(s)", "candidates": rows}
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
    model = load_model(run_dir / "artifacts", build).eval()
    out, int8 = run_dir / "runtime-compare", own.precision == "int8"
    items = [(own, "the run's artifact")]
    if int8:
        items += [(a, "re-export (FP32)") for a in runtime_artifacts(model, task, settings, out, own.runtime, False)]
    if not isinstance(task.example_inputs(1), dict):  # token inputs: exported to ONNX only (see llm.export)
        items += [(a, "re-export" + (" (default quant.ptq)" if a.precision == "int8" else ""))
                  for name in compared_runtimes() if name != own.runtime
                  for a in runtime_artifacts(model, task, settings, out, name, int8)]
    rows = measure_side_by_side([a for a, _ in items], task, settings)
    return [{**row, "source": source} for row, (_, source) in zip(rows, items)]


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
