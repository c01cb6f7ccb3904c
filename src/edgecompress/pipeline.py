"""Run a recipe: baseline, then each stage; measure the deployable artifact after every stage;
checkpoint each stage so a crashed run resumes after the last finished one with the same result."""

from __future__ import annotations

import copy
import functools
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape
from torch import nn

from edgecompress import baseline, placement, registry, rundir, validate
from edgecompress.checkpoint import ARCH_ATTR, load_model, save_model
from edgecompress.context import StageContext, StageMeter, StageOutput, StageReport
from edgecompress.data.datasets import load_task
from edgecompress.summary import chance_warning, checks, summarize
from edgecompress.tasks import Task, call
from edgecompress.tasks.classification import ClassificationTask
from edgecompress.export import Artifact, export
from edgecompress.measure import layer_table, measure
from edgecompress.measure.latency import interleaved, speedup
from edgecompress.recipe import Recipe
from edgecompress.settings import ExportSettings
from edgecompress.ui import console

log = logging.getLogger("edgecompress")


@dataclass
class RunResult:
    """What a run produced: the compressed PyTorch model, the deployable artifact, and the measurements."""

    model: nn.Module
    artifact: Artifact
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    checks: list[dict[str, Any]]
    run_dir: Path
    report: Path | None

    def export(self, path: str | Path) -> Path:
        """Copy the deployable artifact (every file it needs) to ``path`` (a file name for the main file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.artifact.path, path)
        for extra in self.artifact.extra_files:
            shutil.copyfile(extra, path.parent / extra.name)
        return path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Pipeline:
    """One run of a recipe into a run directory. ``model``/``task`` override the recipe's when given."""

    def __init__(self, recipe: Recipe, out: Path, *, model: nn.Module | None = None, task: Task | None = None,
                 resume: bool = False, force: bool = False, trust_pickle: bool = False, progress: bool = True,
                 report: bool = True):
        self.recipe, self.out, self.user_model = recipe, Path(out), model
        self.resume, self.force, self.trust_pickle = resume, force, trust_pickle
        self.progress, self.make_report = progress, report
        self.task = task
        self.export, self.runtime_choice = recipe.export, None  # resolved when export.format is "fastest"
        self.baseline_report: StageReport | None = None  # loading (and training) the baseline
        self.device = placement.CPU  # the recipe's device, resolved (and checked) when the run starts
        self.threads = recipe.threads or placement.default_threads()  # torch's CPU threads for the whole run

    # -- model building -------------------------------------------------------------------------------
    def _build(self, arch: dict | None) -> nn.Module:
        """A fresh model of the architecture a checkpoint was saved from."""
        if arch is not None:
            return baseline.build_from_arch(arch)
        if self.user_model is not None:
            return copy.deepcopy(self.user_model)
        return baseline.load(self.recipe, self.task, trust_pickle=self.trust_pickle, train=False)

    def _checkpoint(self, entry: dict) -> nn.Module:
        """A stage's saved model, checked to run on the task's inputs (a damaged or edited file is named)."""
        path = rundir.child(self.out, entry["checkpoint"])
        model = load_model(path, self._build)
        try:
            with torch.no_grad():
                call(model, self.task.example_inputs(1))
        except (RuntimeError, IndexError) as err:
            raise rundir.EdgeCompressError(
                f"the saved model does not run on the task's inputs ({str(err).splitlines()[0]})", where=str(path),
                fix="restore the checkpoint, or start a new run (--force replaces the run directory)") from None
        return model

    # -- one stage ------------------------------------------------------------------------------------
    def _record(self, index: int, name: str, method: str, model: nn.Module, artifact: Artifact | None,
                info: dict, report: StageReport) -> dict:
        sdir = rundir.stage_dir(self.out, index, name)
        example = self.task.example_inputs(1)
        if artifact is None:
            artifact = export(model, example, sdir, self.export)
        metrics = measure(model, artifact, self.task, self.export)
        metrics["stage_seconds"] = round(report.wall_seconds, 3)
        save_model(model, sdir)
        return {
            "index": index, "name": name, "method": method, "metrics": metrics,
            "layers": layer_table(model, example), "info": info, "report": report.model_dump(),
            "checkpoint": str(sdir.relative_to(self.out)),
            "artifact": {**artifact.to_json(), "path": str(artifact.path.relative_to(self.out)),
                         "extra_files": [str(p.relative_to(self.out)) for p in artifact.extra_files]},
        }

    def _run_stage(self, index: int, entry, model: nn.Module, teacher: nn.Module) -> dict:
        """Run one stage on its device (the run's device if the stage supports it, else the CPU) with the model
        and the teacher moved there; its result comes back to the CPU to be exported, measured and saved."""
        stage = registry.get(entry.method)
        device = stage.device_for(self.device)
        sdir = rundir.stage_dir(self.out, index, entry.name)
        ctx = StageContext(task=self.task, teacher=placement.move(teacher, device), seed=self.recipe.seed + index,
                           workdir=sdir, export=self.export, progress=self.progress, device=device)
        seed_everything(ctx.seed)
        where = "" if device == placement.CPU else f" on {device}"
        console.print(f"[bold cyan]stage {index}[/] {entry.name}{where}")
        with StageMeter(self.task) as meter:
            result = stage(placement.move(copy.deepcopy(model), device), entry.config, ctx)
            out = result if isinstance(result, StageOutput) else StageOutput(result)
            out.model = placement.move(out.model, placement.CPU)  # waits for queued GPU work: the stage's time
        report = meter.report(ctx, entry.config.labels_needed() is not None)
        return self._record(index, entry.name, entry.method, out.model, out.artifact, ctx.info, report)

    # -- whole run ------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Check the run directory, load and check the model and data, then run inside a locked workspace
        (a replaced run is removed only once the new baseline exists); torch uses ``self.threads`` throughout."""
        with placement.torch_threads(self.threads):
            return self._checked_run()

    def _checked_run(self) -> RunResult:
        started = time.perf_counter()
        rundir.check_target(self.out, resume=self.resume, force=self.force)
        self.device = placement.resolve_device(self.recipe.device)
        if self.task is None:
            self.task = load_task(self.recipe.data)  # checks the data as it loads
        else:
            validate.check_task(self.task, f"data ({self.task.name})")
        if self.task.kind not in registry.PIPELINE_TASK_KINDS:
            raise rundir.EdgeCompressError(
                f"the pipeline cannot run {self.task.kind} tasks (data {self.task.name!r})", where="data",
                fix=f"use data of a kind it runs: {', '.join(registry.PIPELINE_TASK_KINDS)}")
        if self.task.kind in registry.TOKEN_TASK_KINDS and self.export.format != "onnx":
            raise rundir.EdgeCompressError(
                f"models with token inputs ({self.task.kind} data) are exported to ONNX only, not "
                f"{self.export.format!r}", where="export.format", fix="use export: {format: onnx}")
        if self.recipe.targets.max_perplexity_increase_pct is not None and self.task.metric != "perplexity":
            raise rundir.EdgeCompressError(
                f"max_perplexity_increase_pct judges perplexity, but {self.task.kind} data is judged by "
                f"{self.task.metric}", where="targets.max_perplexity_increase_pct",
                fix="remove it, or use max_accuracy_drop (the drop of the headline metric in points)")
        for i, entry in enumerate(self.recipe.stages):
            registry.get(entry.method).check_task(entry.config, self.task, where=f"stages[{i}] ({entry.name})")
        model = None if self.resume else self._load_baseline()
        with rundir.Workspace(self.out, resume=self.resume) as workspace:
            handler = logging.FileHandler(self.out / "run.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
            try:
                return self._run(workspace, model, started)
            except OSError as err:  # disk full, permissions, ...: the run resumes once the cause is fixed
                raise rundir.os_error(err, Path(err.filename or self.out)) from None
            finally:
                log.removeHandler(handler)
                handler.close()

    def _load_baseline(self) -> nn.Module:
        """The model the run starts from (the user's, or the recipe's, trained when asked), checked against the task."""
        seed_everything(self.recipe.seed)
        with StageMeter(self.task) as meter:
            if self.user_model is not None:
                model = placement.move(copy.deepcopy(self.user_model), placement.CPU)
            else:
                model = baseline.load(self.recipe, self.task, trust_pickle=self.trust_pickle, progress=self.progress,
                                      device=self.device)
        pretrained = self.recipe.model is not None and self.recipe.model.pretrain is not None
        trained = meter.used.get("train")  # the train split is read only when the baseline is trained (not cached)
        self.baseline_report = meter.report(None, labelled=pretrained, device=self.device if trained else placement.CPU)
        validate.check_model_and_task(model, self.task)
        self.task.bind_reference(model)
        return model

    def _load_state(self) -> list[dict]:
        if not self.resume:
            rundir.write_atomic(self.out / rundir.RECIPE, self.recipe.to_yaml())
            rundir.write_json(self.out / rundir.STATE, {"fingerprint": self.recipe.fingerprint(), "completed": -1})
            return []
        state = rundir.read_json(self.out / rundir.STATE, keys=("fingerprint", "completed"))
        if state["fingerprint"] != self.recipe.fingerprint():
            raise rundir.EdgeCompressError(
                "the recipe differs from the one this run was started with", where=str(self.out / rundir.RECIPE),
                fix="resume without a recipe argument (the run's own recipe.yaml is used), or start a new run")
        completed = state["completed"]
        if not isinstance(completed, int) or not -1 <= completed <= len(self.recipe.stages):
            raise rundir.EdgeCompressError(f"damaged: completed = {completed!r} is not a stage index",
                                           where=str(self.out / rundir.STATE),
                                           fix="restore the file, or start a new run (--force replaces this run)")
        if completed < 0:
            return []
        history = rundir.read_json(self.out / rundir.METRICS, keys=("history",))["history"]
        if not isinstance(history, list) or len(history) <= completed or not all(
                isinstance(h, dict) and {"checkpoint", "artifact", "metrics"} <= h.keys() for h in history):
            raise rundir.EdgeCompressError(
                f"damaged: the history does not hold the {completed + 1} finished stage(s) state.json records",
                where=str(self.out / rundir.METRICS), fix="restore the file, or start a new run (--force)")
        return history[: completed + 1]

    def _save(self, history: list[dict], extra: dict | None = None) -> None:
        rundir.write_json(self.out / rundir.METRICS, self._metrics_doc(history, extra or {}))
        state = {"fingerprint": self.recipe.fingerprint(), "completed": len(history) - 1}
        rundir.write_json(self.out / rundir.STATE, state)

    def _metrics_doc(self, history: list[dict], extra: dict) -> dict:
        r = self.recipe
        model_name = (r.model.zoo or r.model.callable or r.model.hf or "file") if r.model else \
            type(self.user_model).__name__
        return {"recipe": r.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seed": r.seed,
                "model": model_name, "dataset": self.task.name, "threads": self.threads,
                "task": {"kind": self.task.kind, "metric": self.task.metric},
                "export": self.export.model_dump(), "targets": r.targets.model_dump(), "history": history,
                **({"runtime_choice": self.runtime_choice} if self.runtime_choice else {}), **extra}

    def _resolve_fastest(self, model: nn.Module) -> None:
        """``export.format: fastest``: export the baseline for both runtimes, keep the faster for the whole run."""
        if self.export.format != "fastest":
            return
        from edgecompress.runcompare import resolve_fastest

        console.print("choosing the faster runtime for the baseline (ONNX Runtime vs ExecuTorch)")
        self.export, self.runtime_choice = resolve_fastest(model, self.task, self.export, self.out / "runtime-choice")
        log.info("export.format fastest -> %s", self.runtime_choice["format"])

    def _run(self, workspace: rundir.Workspace, model: nn.Module | None, started: float) -> RunResult:
        history = self._load_state()
        if history:
            console.print(f"resuming after stage {history[-1]['index']} ({history[-1]['name']})")
            teacher, model = self._checkpoint(history[0]), self._checkpoint(history[-1])
            self.task.bind_reference(teacher)
            doc = rundir.read_json(self.out / rundir.METRICS)  # the export settings the run resolved and used
            self.export, self.runtime_choice = ExportSettings(**doc["export"]), doc.get("runtime_choice")
        else:
            model = model if model is not None else self._load_baseline()
            self._resolve_fastest(model)
            console.print("[bold cyan]stage 0[/] baseline")
            history.append(self._record(0, "baseline", "baseline", model, None, {}, self.baseline_report))
            warning = self._baseline_warning(history[0])
            if warning:
                log.warning(warning)
                console.print(f"[bold red]warning:[/] {escape(warning)}", highlight=False)
            self._save(history)
            workspace.baseline_saved()
            teacher = model
        teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
        for index, entry in enumerate(self.recipe.stages, start=1):
            if index < len(history):
                continue
            history.append(self._run_stage(index, entry, model, teacher))
            self._save(history)
            model = self._checkpoint(history[-1])  # the exact model a resumed run would continue from
            log.info("stage %d %s done: %s", index, entry.name, history[-1]["metrics"])
        return self._finish(history, model, started)

    def _test_samples(self) -> int | None:
        """The size of the labelled test split of a classification task (None for other tasks)."""
        if isinstance(self.task, ClassificationTask) and self.task.has_labels:
            return len(self.task.split("test"))
        return None

    def _baseline_warning(self, baseline: dict) -> str | None:
        """Why the run says nothing when the baseline's accuracy is at chance level (None otherwise)."""
        accuracy, samples = baseline["metrics"].get("accuracy"), self._test_samples()
        if accuracy is None or samples is None:
            return None
        return chance_warning(accuracy, self.task.chance_accuracy(), samples)

    def _gpu_metrics(self, model: nn.Module) -> dict[str, Any]:
        """The final float model's PyTorch latency (CUDA events) and energy (NVML, where present) on the run's GPU."""
        from edgecompress.measure.gpu import gpu_metrics

        console.print(f"measuring the final PyTorch model on {self.device}")
        s = self.export
        try:
            return gpu_metrics(model, self.task.input_shape, self.device, batch=s.batch, warmup=s.warmup,
                               repeats=s.repeats)
        except RuntimeError as err:  # e.g. a model whose forward uses CPU tensors kept outside its buffers
            reason = f"{type(err).__name__}: {str(err).splitlines()[0]}"
            log.warning("the final model does not run on %s: %s", self.device, reason)
            return {"gpu_metrics_error": f"not measured on {self.device}: {reason}"}

    def _artifact(self, entry: dict) -> Artifact:
        """The artifact a history entry recorded (its paths are inside the run directory)."""
        inside = functools.partial(rundir.child, self.out)
        return Artifact.from_json({**entry["artifact"], "path": str(inside(entry["artifact"]["path"])),
                                   "extra_files": [str(inside(p)) for p in entry["artifact"]["extra_files"]]})

    def _speedups(self, history: list[dict]) -> None:
        """Every stage's artifact timed side by side with the baseline's in interleaved rounds (one process): each
        entry's ``metrics["speedup"]`` is the median per-round ratio to the baseline with its interquartile range."""
        if len(history) < 2:
            return
        s = self.export
        console.print(f"timing the {len(history)} artifacts side by side ({s.rounds} interleaved rounds)")
        per_round = interleaved([self._artifact(h) for h in history], self.task.input_shape, threads=s.threads,
                                batch=s.batch, rounds=s.rounds, repeats=s.repeats, warmup=s.warmup,
                                vocab_size=getattr(self.task, "vocab_size", None))
        for entry, ms in zip(history[1:], per_round[1:]):
            entry["metrics"]["speedup"] = speedup(per_round[0], ms)

    def _finish(self, history: list[dict], model: nn.Module, started: float) -> RunResult:
        final = history[-1]
        inside = functools.partial(rundir.child, self.out)
        artifact = self._artifact(final)
        dest = inside("artifacts")
        dest.mkdir(exist_ok=True)
        for f in artifact.files:
            shutil.copyfile(f, dest / f.name)
        artifact = Artifact(dest / artifact.path.name, artifact.format, artifact.runtime, artifact.precision,
                            [dest / p.name for p in artifact.extra_files])
        save_model(model, dest)
        if isinstance(getattr(model, ARCH_ATTR, None), dict) and "hf" in getattr(model, ARCH_ATTR):
            from edgecompress.llm.models import complete_hf_dir  # artifacts/ reloads with transformers

            spec = self.recipe.model if self.user_model is None else None
            complete_hf_dir(model, dest, spec.hf if spec is not None else None)
        if self.device.type == "cuda" and self.task.kind not in registry.TOKEN_TASK_KINDS:
            final["metrics"].update(self._gpu_metrics(model))
        self._speedups(history)
        summary = summarize(history, self.task.metric, self.task.higher_is_better)
        summary["run_seconds"] = round(time.perf_counter() - started, 2)
        summary["baseline_warning"] = self._baseline_warning(history[0])
        results = checks(history, self.recipe.targets, self.task.metric, self.task.higher_is_better,
                         self._test_samples())
        extra = {"summary": summary, "checks": results}
        if self.recipe.target is not None:  # the fit to the recipe's edge target, as more target checks
            from edgecompress.target.check import artifact_fit

            extra["target_fit"] = artifact_fit(self.recipe.target, artifact, model, self.task.example_inputs(1))
            results += extra["target_fit"]["checks"]
        self._save(history, extra)
        report = None
        if self.make_report:
            from edgecompress.report import build_report

            report = build_report(self.out)
        return RunResult(model, artifact, history, summary, results, self.out, report)
