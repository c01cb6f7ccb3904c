"""The Python API: ``compress`` runs a recipe on a model, ``apply`` runs one stage on its own."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

from torch import nn

from edgecompress import registry
from edgecompress.context import StageContext, StageOutput
from edgecompress.data import DataSpec, data_spec, load_task
from edgecompress.tasks import Task
from edgecompress.pipeline import Pipeline, RunResult
from edgecompress.recipe import Recipe, load_recipe, parse_recipe
from edgecompress.settings import ExportSettings

RecipeLike = Recipe | str | Path | list[dict[str, Any]]
TaskLike = Task | DataSpec | str | None


def _as_recipe(recipe: RecipeLike) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, list):
        return parse_recipe({"name": "python", "stages": recipe})
    return load_recipe(recipe)


def _as_task(task: TaskLike, recipe: Recipe) -> Task:
    if isinstance(task, Task):
        return task
    if isinstance(task, str):
        return load_task(data_spec(dataset=task))
    return load_task(task or recipe.data)


def compress(model: nn.Module | None = None, task: TaskLike = None, recipe: RecipeLike = "default", *,
             out: str | Path | None = None, resume: bool = False, force: bool = False, progress: bool = True,
             report: bool = True, trust_pickle: bool = False, threads: int | None = None) -> RunResult:
    """Run ``recipe`` (a path, a packaged recipe name, a Recipe or a list of stage dicts) on ``model``
    (default: the recipe's model) and ``task`` (a Task, a DataSpec, a dataset name, or the recipe's data).
    ``threads`` replaces the recipe's (torch's CPU threads for the run; default: half the usable CPUs).

    The input model is never modified. Returns a :class:`RunResult` with the compressed model, the
    deployable artifact (``result.export(path)`` copies it), the per-stage metrics and the report path.
    """
    recipe = _as_recipe(recipe)
    if threads is not None:
        recipe = recipe.with_threads(threads)
    if model is None and recipe.model is None:
        raise ValueError("pass a model, or a recipe with a `model:` section")
    if out is None:
        out = Path(tempfile.mkdtemp(prefix=f"edgecompress-{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}-"))
    pipeline = Pipeline(recipe, Path(out), model=model, task=_as_task(task, recipe), resume=resume, force=force,
                        trust_pickle=trust_pickle, progress=progress, report=report)
    return pipeline.run()


def apply(method: str, model: nn.Module, task: Task | None = None, *, teacher: nn.Module | None = None,
          seed: int = 0, workdir: str | Path | None = None, export: ExportSettings | None = None,
          progress: bool = False, **config: Any) -> nn.Module | StageOutput:
    """Run one registered stage on ``model`` (not modified in place), e.g.
    ``apply("prune.structured", model, task, ratio=0.5)``. Returns the new model, or a StageOutput
    (model + artifact) for stages that produce the deployable artifact."""
    stage = registry.get(method)
    ctx = StageContext(task=task, teacher=teacher, seed=seed, workdir=Path(workdir) if workdir else None,
                       export=export or ExportSettings(), progress=progress)
    return stage(copy.deepcopy(model), stage.config(**config), ctx)
