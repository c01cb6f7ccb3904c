"""ICE-Pruning's hyperparameter search: an Optuna grid search over the settings of the enabled components,
each trial a full ICE run (probe, freezing, step loop) on a small random subset of the train and val data.

The grid is the authors' (gicLAB/ICE-Pruning). Their objective (``search_objective: authors``), with ``t``
the trial's wall seconds and ``drop`` its accuracy drop in points, is ``t / max(t, drop) + drop / max(t, drop)``
= ``1 + min(t, drop) / max(t, drop)``: it mixes seconds and points, so when trials take less time than they
lose points (any CPU-sized run) it rewards the *largest* drop. The default (``budget``, our deviation) is
unit-free: the trial with the least CPU time among those that lose at most ``search_tolerance`` points,
else the one that loses least.
"""

from __future__ import annotations

import math
import time

import optuna
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgecompress.tasks import Task
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


def budget_value(cpu_seconds: float, drop: float, tolerance: float) -> float:
    """Our objective (lower is better): CPU seconds when ``drop <= tolerance``, else 1e6 + drop (every trial
    within the tolerance beats every trial outside it; outside, the smaller drop wins)."""
    return cpu_seconds if drop <= tolerance + 1e-9 else 1e6 + drop


def subset_task(task: Task, fraction: float, min_samples: int, seed: int) -> Task:
    """``task`` with train and val replaced by random subsets of ``fraction`` of them (at least
    ``min_samples`` each, or the whole split when it is smaller)."""
    gen = torch.Generator().manual_seed(seed)

    def pick(data: TensorDataset) -> TensorDataset:
        count = min(len(data), max(min_samples, math.ceil(fraction * len(data))))
        index = torch.randperm(len(data), generator=gen)[:count]
        return TensorDataset(*(t[index] for t in data.tensors))

    return task.with_splits(f"{task.name}-subset", train=pick(task.train), val=pick(task.val))


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
        began, cpu = time.perf_counter(), time.process_time()
        _, loop = run_ice(model, sub, teacher, base.model_copy(update=settings), ratio=ratio, seed=seed,
                          progress=False, measure_macs=False)
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
        drop = (a0 - loop["final_accuracy"]) * 100
        value = (objective_value(seconds, drop) if config.search_objective == "authors"
                 else budget_value(cpu, drop, config.search_tolerance))
        trials.append({**settings, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                       "drop_points": round(drop, 3), "finetune_epochs": loop["finetune_epochs"], "objective": value})
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.GridSampler(grid, seed=seed))
    study.optimize(objective, n_trials=config.search_trials, timeout=config.search_timeout_s)
    return dict(study.best_params), {
        "seconds": round(time.perf_counter() - start, 3), "trials": trials, "best": dict(study.best_params),
        "subset": {"train": len(sub.train), "val": len(sub.val)}, "unpruned_subset_accuracy": a0,
    }
