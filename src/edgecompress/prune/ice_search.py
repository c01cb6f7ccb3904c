"""ICE-Pruning's hyperparameter search: an Optuna grid search over the settings of the enabled components,
each trial a full ICE run (probe, freezing, step loop) on a small random subset of the train and val data.

The grid and the objective are the authors' (gicLAB/ICE-Pruning): with ``t`` the trial's wall seconds and
``drop`` its accuracy drop in points, ``t / max(t, drop) + drop / max(t, drop)``. Note that this objective
mixes seconds and points: when ``t > drop`` it equals ``1 + drop / t``.
"""

from __future__ import annotations

import dataclasses
import math
import time

import optuna
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgecompress.data.task import Task
from edgecompress.train import accuracy

GRID: dict[str, list[float]] = {
    "tau": [0.5, 1.5], "freeze_fraction": [0.3, 0.9], "lr_base": [1e-3, 5e-3],
    "lr_p": [0.1, 0.15, 0.2], "lr_beta": [40.0, 50.0, 60.0], "lr_delta": [6e-4, 7e-4, 8e-4],
}
SEARCHED = {"threshold": ["tau"], "freeze": ["freeze_fraction"], "adapt_lr": ["lr_base", "lr_p", "lr_beta", "lr_delta"]}


def objective_value(seconds: float, drop: float) -> float:
    """The authors' search objective (lower is better)."""
    scale = max(seconds, drop, 1e-12)
    return seconds / scale + drop / scale


def subset_task(task: Task, fraction: float, min_samples: int, seed: int) -> Task:
    """``task`` with train and val replaced by random subsets of ``fraction`` of them (at least
    ``min_samples`` each, or the whole split when it is smaller)."""
    gen = torch.Generator().manual_seed(seed)

    def pick(data: TensorDataset) -> TensorDataset:
        count = min(len(data), max(min_samples, math.ceil(fraction * len(data))))
        index = torch.randperm(len(data), generator=gen)[:count]
        return TensorDataset(*(t[index] for t in data.tensors))

    return dataclasses.replace(task, name=f"{task.name}-subset", train=pick(task.train), val=pick(task.val))


def search_settings(model: nn.Module, task: Task, teacher: nn.Module | None, config, *, ratio: float,
                    seed: int) -> tuple[dict, dict]:
    """Grid-search the enabled components' settings; returns the best settings and a report (trials, seconds)."""
    from edgecompress.prune.ice import run_ice

    start = time.perf_counter()
    grid = {key: GRID[key] for flag, keys in SEARCHED.items() if getattr(config, flag) for key in keys}
    if not grid:
        return {}, {"seconds": 0.0, "skipped": "no searchable component (threshold, freeze, adapt_lr) is on"}
    sub = subset_task(task, config.search_fraction, config.search_min_samples, seed)
    a0 = accuracy(model, sub, "val")
    base = config.model_copy(update={"search": False})
    trials: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        settings = {key: trial.suggest_categorical(key, values) for key, values in grid.items()}
        began = time.perf_counter()
        _, loop = run_ice(model, sub, teacher, base.model_copy(update=settings), ratio=ratio, seed=seed,
                          progress=False, measure_macs=False)
        seconds, drop = time.perf_counter() - began, (a0 - loop["final_accuracy"]) * 100
        trials.append({**settings, "seconds": round(seconds, 3), "drop_points": round(drop, 3),
                       "finetune_epochs": loop["finetune_epochs"], "objective": objective_value(seconds, drop)})
        return objective_value(seconds, drop)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.GridSampler(grid, seed=seed))
    study.optimize(objective, n_trials=config.search_trials, timeout=config.search_timeout_s)
    return dict(study.best_params), {
        "seconds": round(time.perf_counter() - start, 3), "trials": trials, "best": dict(study.best_params),
        "subset": {"train": len(sub.train), "val": len(sub.val)}, "unpruned_subset_accuracy": a0,
    }
