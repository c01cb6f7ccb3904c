"""``search.nas``: hardware-aware architecture search over a YAML search space of ``nas_cnn`` networks.

Optuna's NSGA-II sampler proposes architectures (per stage: depth, width multiplier, kernel, activation, block);
each is trained briefly from scratch on the task (``epochs`` x at most ``max_batches`` batches; the same
architecture proposed twice is scored once) and scored on two objectives: validation accuracy (maximised) and
latency in ONNX Runtime at the export's thread count and batch 1 (minimised), predicted by the latency table
(:mod:`edgecompress.measure.latency_model`; ``latency: measured`` exports and times every candidate instead). The
non-dominated trials form the Pareto front; every front member and the incoming model are then exported and timed
together (interleaved rounds), which also reports the table's error on them. The chosen model, the fastest front
member within ``tolerance`` points of the front's best accuracy (or the most accurate within ``max_latency_ms``),
is fine-tuned for ``final_epochs`` and returned; the pipeline exports and measures it.

Under ``torchrun`` the candidates train data-parallel and every rank takes rank 0's latencies, so all ranks
choose the same architectures.

Shortcut, named in the report: candidates are trained for a few epochs on at most ``max_batches`` batches, so
their accuracies rank architectures rather than predict the final accuracy (no weight-sharing supernet).
"""

from __future__ import annotations

import copy
import time
from typing import Any, Literal

import optuna
import torch
from pydantic import Field, field_validator
from torch import nn

from edgecompress import distributed, zoo
from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.measure.counts import count_macs, count_params
from edgecompress.registry import CPU_AND_CUDA, register
from edgecompress.measure.latency_model import LatencyTable, measure_models, prediction_error
from edgecompress.search.nas_space import SearchSpace, load_space
from edgecompress.train import TrainSettings, accuracy, train

STAGE = "search.nas"


class NASConfig(TrainSettings):
    """Settings of ``search.nas``."""

    space: SearchSpace = Field(SearchSpace(), description="the search space, inline or a YAML file's path")
    trials: int = Field(24, ge=2, le=10_000, description="architectures to train and score")
    population: int = Field(8, ge=2, le=1000, description="NSGA-II population size")
    epochs: int = Field(2, ge=1, le=1000, description="training epochs per candidate")
    max_batches: int | None = Field(30, ge=1, description="batches per candidate epoch (None: the whole split)")
    lr: float = Field(0.05, gt=0.0, le=10.0, description="learning rate of candidates (cosine-annealed)")
    final_epochs: int = Field(3, ge=0, le=10_000, description="epochs of further training of the chosen model "
                                                             "(whole train split)")
    latency: Literal["model", "measured"] = Field("model", description="score candidates by the latency table "
                                                  "(model) or by exporting and timing each one (measured)")
    table_networks: int = Field(32, ge=0, le=10_000, description="random architectures whose units the latency "
                                "table times together before the search (units met later are timed then)")
    calibration_models: int = Field(8, ge=0, le=100, description="networks timed end to end to calibrate the "
                                    "latency table before the search (0: raw table)")
    tolerance: float = Field(0.5, ge=0.0, le=100.0, description="choose the fastest front member within this "
                             "many accuracy points of the front's best")
    max_latency_ms: float | None = Field(None, gt=0.0, description="instead: the most accurate front member at "
                                         "most this slow (measured)")
    timeout_s: float | None = Field(None, gt=0.0, description="stop proposing after this many seconds")

    @field_validator("space", mode="before")
    @classmethod
    def _space_file(cls, value: Any) -> Any:
        return load_space(value)

    def labels_needed(self) -> str | None:
        return "candidates are trained and scored on labelled data"


def _key(stages: list[dict]) -> str:
    return "|".join(f"{s['block']}{s['kernel']}x{s['depth']}:{s['channels']}:{s['activation']}" for s in stages)


def _build(task, stages: list[dict], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return zoo.build("nas_cnn", task.input_shape, task.num_classes, stages=stages)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (accuracy up, latency down) that no other point dominates."""
    def dominates(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and a != b
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def choose(front: list[dict], tolerance: float, max_latency_ms: float | None) -> dict:
    """The front member to export (see the module docstring)."""
    if max_latency_ms is not None:
        fast = [m for m in front if m["measured_ms"] <= max_latency_ms]
        return max(fast, key=lambda m: m["val_accuracy"]) if fast else min(front, key=lambda m: m["measured_ms"])
    best = max(m["val_accuracy"] for m in front)
    return min((m for m in front if m["val_accuracy"] >= best - tolerance / 100), key=lambda m: m["measured_ms"])


def _calibrate(table: LatencyTable, task, config: NASConfig, threads: int, seed: int) -> dict:
    """Time the units of ``table_networks`` random architectures together, then fit the table to
    ``calibration_models`` of them timed end to end."""
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed + 1))
    models = [_build(task, config.space.sample(sampler.ask()), seed)
              for _ in range(max(config.table_networks, config.calibration_models))]
    measured = table.prepare(models, task.input_shape, whole=models[:config.calibration_models])
    models = models[:config.calibration_models]
    if not models:
        return {"models": 0}
    raw = [table.raw(m, task.input_shape) for m in models]
    table.fit(raw, measured)
    return {"models": len(models), "scale": table.scale, "offset_ms": table.offset,
            "raw_error": prediction_error(raw, measured)}


@register(STAGE, NASConfig, devices=CPU_AND_CUDA)
def search_nas(model: nn.Module, config: NASConfig, ctx: StageContext) -> nn.Module:
    """Hardware-aware NAS (Optuna NSGA-II): accuracy vs ONNX Runtime latency over a search space of CNNs;
    reports the Pareto front and returns the chosen architecture, trained.

    Candidates train briefly from scratch; latency comes from a measured per-unit lookup table (calibrated on a
    few networks timed end to end) or from timing each export. The front is re-timed with the incoming model.
    """
    task = ctx.require_task(STAGE)
    config.space.check_input(task.input_shape, f"{STAGE}.space")
    threads, device, start = ctx.export.threads, next(model.parameters()).device, time.perf_counter()
    table = LatencyTable(threads)
    calibration = _calibrate(table, task, config, threads, ctx.seed) if config.latency == "model" else {}
    scored: dict[str, dict] = {}

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        stages = config.space.sample(trial)
        key = _key(stages)
        if key not in scored:
            net = _build(task, stages, ctx.seed).to(device)
            began = time.perf_counter()
            train(net, task, epochs=config.epochs, lr=config.lr, optimizer=config.optimizer,
                  batch_size=config.batch_size, weight_decay=config.weight_decay, seed=ctx.seed, progress=False,
                  max_batches=config.max_batches, description=f"{STAGE} trial {trial.number}")
            net = net.cpu().eval()
            latency, = distributed.from_main([table.predict(net, task.input_shape) if config.latency == "model"
                                              else measure_models([net], task.input_shape, threads)[0]])
            scored[key] = {"arch": key, "stages": stages, "val_accuracy": accuracy(net, task, "val"),
                           "latency_ms": latency, "macs": count_macs(net, task.example_inputs(1)),
                           "params": count_params(net), "train_seconds": time.perf_counter() - began, "model": net}
        trial.set_user_attr("arch", key)
        return scored[key]["val_accuracy"], scored[key]["latency_ms"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.NSGAIISampler(
        population_size=config.population, seed=ctx.seed))
    study.optimize(objective, n_trials=config.trials, timeout=config.timeout_s)
    if not scored:
        raise EdgeCompressError("no candidate finished before the time limit", where=f"{STAGE}.timeout_s",
                                fix="raise timeout_s or lower epochs / max_batches")
    rows = list(scored.values())
    front = [rows[i] for i in pareto_front([(r["val_accuracy"], r["latency_ms"]) for r in rows])]
    reference = copy.deepcopy(model).cpu().eval()
    timed = distributed.from_main(measure_models([m["model"] for m in front] + [reference], task.input_shape, threads))
    ref_ms, ref_macs = timed[-1], count_macs(reference, task.example_inputs(1))
    for member, ms in zip(front, timed):
        member.update(measured_ms=ms, latency_x=ref_ms / ms, macs_x=ref_macs / max(member["macs"], 1))
    chosen = choose(front, config.tolerance, config.max_latency_ms)
    net = copy.deepcopy(chosen["model"]).to(device)
    history = train(net, task, epochs=config.final_epochs, lr=config.lr, optimizer=config.optimizer,
                    batch_size=config.batch_size, weight_decay=config.weight_decay, seed=ctx.seed,
                    progress=ctx.progress, description=f"{STAGE} final") if config.final_epochs else []
    public = [{k: v for k, v in r.items() if k != "model"} for r in rows]
    ctx.info.update({
        "trials": len(study.trials), "architectures": len(rows), "space_size": config.space.size,
        "search_seconds": round(time.perf_counter() - start, 2), "threads": threads, "latency_source": config.latency,
        "latency_table": {"units_measured": table.measured, "calibration": calibration},
        "front_latency_error": prediction_error([m["latency_ms"] for m in front], [m["measured_ms"] for m in front])
        if config.latency == "model" and len(front) > 2 else None,
        "reference": {"measured_ms": ref_ms, "macs": ref_macs},
        "candidates": public, "pareto_front": [{k: v for k, v in m.items() if k != "model"} for m in front],
        "chosen": chosen["arch"], "chosen_stages": chosen["stages"],
        "final_val_accuracy": history[-1]["val_accuracy"] if history else chosen["val_accuracy"],
        "shortcut": f"candidates trained {config.epochs} epoch(s) x at most {config.max_batches} batches from "
                    "scratch: their accuracies rank architectures (no weight-sharing supernet)",
    })
    return net
