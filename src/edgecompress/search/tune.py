"""Accuracy-aware auto-tuning of a recipe: ``edgecompress tune`` (``tune()`` from Python).

Each trial sets the stage fields the recipe's ``search:`` section varies, runs that candidate recipe through the
pipeline into ``OUT/trials/<study>-<n>`` (exported and measured in its runtime like any run) and gives Optuna two
objectives to minimize: the artifact's cost (size on disk, p50 latency or MACs) and the drop of the task's
headline metric in points from the baseline on the validation split, with ``drop - max_drop <= 0`` as TPE's
constraint. The search selects on the validation split so that the test split, which the pipeline measures and
reports (``test_drop_points``), stays unseen by the selection. The baseline is loaded (trained, when the recipe
says so, and cached) once per worker before any trial.

Stopping: once the study's finished and running trials (all workers together) reach ``trials``, or when another
trial would not fit in ``time_budget_s`` (judged by the worker's slowest trial so far; a started trial is never
cut short). Before counting, the trials of workers that stopped sending heartbeats are failed and queued again.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field

from edgecompress import baseline
from edgecompress.data.datasets import load_task
from edgecompress.errors import EdgeCompressError
from edgecompress.export import Artifact
from edgecompress.pipeline import Pipeline
from edgecompress.recipe import Recipe, Slug
from edgecompress.search import space, study as studies
from edgecompress.search.command import figure, settings_line
from edgecompress.ui import console

OBJECTIVES = {"size": "size_bytes", "latency": "latency_p50_ms", "macs": "macs"}  # --objective -> artifact metric
STARTUP_TRIALS = 5  # random candidates before TPE models the results


class TuneSettings(BaseModel):
    """How ``tune`` searches: the accuracy limit, what to minimize, when to stop, and where the study lives."""

    model_config = ConfigDict(extra="forbid")
    max_drop: float = Field(ge=0, description="largest accepted accuracy drop from the baseline on the validation "
                                              "split, in points")
    objective: Literal["size", "latency", "macs"] = Field("size", description="what the search minimizes")
    trials: int = Field(20, ge=0, description="finished trials the study stops at (all workers together)")
    time_budget_s: float | None = Field(None, gt=0, description="wall seconds this worker may search for, counted "
                                                                "once its baseline is loaded")
    storage: str | None = Field(None, description="SQLAlchemy URL of the study (default: SQLite in the tune folder)")
    study: Slug | None = Field(None, description="study name (default: the recipe's name)")
    seed: int | None = Field(None, ge=0, description="sampler seed for a repeatable single-worker search (None: "
                                                      "one per worker, so parallel workers draw different candidates)")
    heartbeat_s: float = Field(10, ge=1, le=600, description="worker heartbeat; a silent worker's trial fails "
                                                             "after 3 heartbeats")


def tune(recipe: Recipe, out: Path, settings: TuneSettings, *, trust_pickle: bool = False) -> dict:
    """Search ``recipe``'s ``search:`` space into ``out`` (resuming its study); returns what ``tune.json`` says."""
    if not recipe.search:
        raise EdgeCompressError("the recipe has no `search:` section, so there is nothing to tune",
                                fix="add one, e.g. `search: {prune.structured: {ratio: {low: 0.3, high: 0.8}}}`")
    errors = space.check(recipe.search, recipe.stages)
    if errors:
        raise EdgeCompressError("; ".join(f"{'.'.join(map(str, p))}: {m}" for p, m in errors), where="search")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise EdgeCompressError("--out must be a directory (not a file or a link)", where=str(out),
                                fix="choose another --out")
    name = settings.study or recipe.name
    url = settings.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    if settings.storage is None:
        out.mkdir(parents=True, exist_ok=True)
    storage = studies.open_storage(url, settings.heartbeat_s)  # a shared URL is checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    identity = {"recipe": recipe.model_copy(update={"search": None}).fingerprint(), "max_drop": settings.max_drop,
                "objective": settings.objective, "search": {k: v.model_dump() for k, v in recipe.search.items()}}
    study = studies.open_study(storage, name, identity, _sampler(settings.seed, recipe, url, name),
                               space.recipe_values(recipe.search, recipe.stages))
    doc = {"study": name, "storage": studies.shown_url(url), "objective": settings.objective,
           "metric": OBJECTIVES[settings.objective], "max_drop": settings.max_drop}
    Worker(recipe, out, settings, name, trust_pickle).run(study, doc)  # --trials 0: trains and caches the baseline
    return studies.keep(out, study, doc)


def _sampler(seed: int | None, recipe: Recipe, url: str, name: str) -> optuna.samplers.TPESampler:
    """TPE (it reads each trial's constraint ``drop - max_drop <= 0``) with ``seed``, or seeded per worker (two
    workers must not draw the same candidates, so their results are not repeatable trial by trial)."""
    if seed is None:
        worker = f"{recipe.seed}:{url}:{name}:{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        seed = int(hashlib.sha256(worker.encode()).hexdigest()[:8], 16)
    return optuna.samplers.TPESampler(n_startup_trials=STARTUP_TRIALS, seed=seed)


def _claimed(study: optuna.Study) -> int:
    """Trials finished or running; the running trials of dead workers are failed (and queued again) first."""
    with warnings.catch_warnings():  # "experimental" since optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


class Worker:
    """One process working on the study: loads the task and baseline once, then runs trials until a stop rule."""

    def __init__(self, recipe: Recipe, out: Path, settings: TuneSettings, study_name: str, trust_pickle: bool):
        self.recipe, self.out, self.settings, self.study_name = recipe, out, settings, study_name
        self.task = load_task(recipe.data)
        self.baseline = baseline.load(recipe, self.task, trust_pickle=trust_pickle, progress=False)
        if not self.task.higher_is_better:
            raise EdgeCompressError(f"tune limits the accuracy drop, and {self.task.name} data is judged by "
                                    f"{self.task.metric} (lower is better)", where="data",
                                    fix="tune a recipe on data judged by accuracy")
        self.started, self.slowest = time.perf_counter(), 0.0
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, study: optuna.Study, doc: dict) -> None:
        def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            kept = studies.keep(self.out, study, doc)
            line = _trial_line(trial, doc["metric"])
            console.print(f"trial {trial.number}: {line}; best so far: {_best_line(kept)}", highlight=False)
            if _claimed(study) >= self.settings.trials or not self._time_for_another():
                study.stop()

        if self._time_for_another() and _claimed(study) < self.settings.trials:
            study.optimize(self.objective, callbacks=[after], catch=(EdgeCompressError,), gc_after_trial=True)

    def _time_for_another(self) -> bool:
        budget = self.settings.time_budget_s
        return budget is None or time.perf_counter() - self.started + self.slowest <= budget

    def objective(self, trial: optuna.Trial) -> tuple[float, float]:
        began = time.perf_counter()
        if _claimed(trial.study) - 1 >= self.settings.trials:  # another worker started the last trial meanwhile
            raise optuna.TrialPruned("the study already has its trials finished or running")
        chosen = space.suggest(trial, self.recipe.search, self.recipe.stages)
        candidate = self.recipe.model_copy(update={"stages": space.apply(self.recipe.stages, chosen), "search": None})
        run_dir = Path("trials") / f"{self.study_name}-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", self.name)
        quiet, console.quiet = console.quiet, True
        try:
            result = Pipeline(candidate, self.out / run_dir, model=self.baseline, task=self.task, force=True,
                              progress=False, report=False).run()
        finally:
            console.quiet = quiet
        metric = OBJECTIVES[self.settings.objective]
        final, base = result.history[-1]["metrics"], result.history[0]["metrics"]
        if final.get(metric) is None:
            raise EdgeCompressError(f"the artifact has no {metric} measurement", where=str(self.out / run_dir))
        self.slowest = max(self.slowest, time.perf_counter() - began)
        trial.set_user_attr("seconds", round(time.perf_counter() - began, 2))
        trial.set_user_attr("metrics", {k: final.get(k) for k in ("accuracy", *OBJECTIVES.values())})
        trial.set_user_attr("baseline", {k: base.get(k) for k in ("accuracy", *OBJECTIVES.values())})
        base_val, val = (self._val(a) for a in (_baseline_artifact(self.out / run_dir, result.history[0]),
                                                 result.artifact))
        drop = round((base_val - val) * 100, 3)
        trial.set_user_attr("test_drop_points", result.summary["accuracy_drop_points"])
        trial.set_constraint("val_drop", drop - self.settings.max_drop)
        return float(final[metric]), drop


    def _val(self, artifact: Artifact) -> float:
        """The task's headline metric of ``artifact``, run in its runtime, on the validation split."""
        return self.task.evaluate(artifact.runner(self.recipe.export.threads), "val")[self.task.metric]


def _baseline_artifact(run_dir: Path, entry: dict) -> Artifact:
    """The exported baseline of a run (its history's first entry; paths there are relative to the run)."""
    a = entry["artifact"]
    return Artifact.from_json({**a, "path": str(run_dir / a["path"]),
                               "extra_files": [str(run_dir / p) for p in a["extra_files"]]})


def _trial_line(trial: optuna.trial.FrozenTrial, metric: str) -> str:
    if trial.state != optuna.trial.TrialState.COMPLETE:
        return trial.state.name.lower()
    test = trial.user_attrs["test_drop_points"]
    return (f"{metric} {figure(trial.values[0])}, drop {trial.values[1]:.2f} points on val ({test:.2f} on test), "
            f"{settings_line(trial.params)}")


def _best_line(doc: dict) -> str:
    b = doc.get("best")
    if b is None:
        return "none yet"
    met = "within the limit" if doc["limit_met"] else f"limit missed by {doc['missed_by_points']:.2f} points"
    value = figure(b[doc["metric"]])
    return f"trial {b['trial']} ({doc['metric']} {value}, val drop {b['val_drop_points']:.2f}, {met})"


def tune_dir(recipe: Recipe) -> Path:
    """The default tune folder: stable, so running the same command again resumes."""
    return Path("runs") / f"{recipe.name}-tune"

