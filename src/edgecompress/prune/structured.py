"""Structured channel/filter pruning with torch-pruning: channels are physically removed."""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch_pruning as tp
from pydantic import Field, model_validator
from torch import nn

from edgecompress.context import StageContext
from edgecompress.tasks import Task
from edgecompress.errors import EdgeCompressError
from edgecompress.measure.counts import count_macs, count_params
from edgecompress.nn.bn import reestimate_bn
from edgecompress.nn.layers import build_graph, resolve_layers, weight_layers
from edgecompress.calibration import MIN_CALIB_SAMPLES, calibration_samples
from edgecompress.prune import align, sensitivity
from edgecompress.prune.align import AlignedPruner
from edgecompress.prune.explain import explain_failures
from edgecompress.prune.importance import ActivationImportance, input_moments
from edgecompress.prune.latency_cost import LatencyCost
from edgecompress.prune.analysis import output_layers, ratio_or_macs_target
from edgecompress.registry import CPU_AND_CUDA, register
from edgecompress.ui import progress

STAGE = "prune.structured"


class StructuredConfig(align.AlignedConfig):
    """Settings of ``prune.structured``: how many channels go (``ratio`` or ``target_macs_ratio``) and which."""

    ratio: float | None = Field(
        None, ge=0.0, le=0.95,
        description="fraction of output channels removed from every prunable layer (0.5 leaves ~25% of conv "
                    "params); default 0.5 when target_macs_ratio is not given")
    target_macs_ratio: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="instead of ratio: prune step by step until MACs <= this fraction of the original")
    target_latency_ratio: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="instead of ratio (scope sensitivity): prune until the latency predicted for the export runtime "
                    "(ONNX Runtime, at export.threads and export.batch, from blocks timed alone on this machine) is "
                    "<= this fraction of the original; each layer is credited with the latency (not the MACs) its "
                    "pruning saves")
    criterion: Literal["l1", "l2", "taylor", "bn_scale", "activation"] = Field(
        "l2", description="channel importance: l1/l2 weight norm, taylor |w * dL/dw| (uses training batches), "
                          "bn_scale |gamma| of the following BatchNorm (layers without one are left alone), "
                          "activation: ||W[:, c]||^2 * E[x_c^2] summed over the layers consuming channel c, from "
                          "unlabeled calibration inputs (what removing c changes in their outputs)")
    scope: Literal["uniform", "global", "sensitivity"] = Field(
        "uniform", description="uniform: the same ratio in every layer; global: channels ranked across layers; "
                               "sensitivity: per-layer ratios from the output error each layer's pruning causes on "
                               "unlabeled calibration inputs, the least total error within target_macs_ratio")
    calib_samples: int = Field(64, ge=MIN_CALIB_SAMPLES, le=100_000,
                               description="unlabeled inputs for criterion activation, scope sensitivity and "
                                           "recalibrate_bn")
    recalibrate_bn: bool = Field(
        False, description="re-estimate BatchNorm statistics of the pruned model on the calibration inputs (what "
                           "recover.bn does); with scope sensitivity each layer's error is measured after that "
                           "re-estimation too, so the ratios suit the recalibrated model")
    sensitivity_steps: int = Field(
        1, ge=1, le=10, description="scope sensitivity: prune in this many steps towards target_macs_ratio "
                                    "(geometric), measuring again on the pruned model each time")
    sensitivity_ratios: list[float] = Field(
        [0.125, 0.25, 0.375, 0.5, 0.625, 0.75], min_length=1,
        description="scope sensitivity: the ratios at which each layer's output error is measured (at most "
                    "max_layer_ratio)")
    remove_blocks: bool = Field(
        False, description="scope sensitivity: also weigh removing whole blocks whose output has their input's shape "
                           "(residual blocks: the shortcut is left) against thinning layers, by the same output "
                           "error per MAC (or per millisecond with target_latency_ratio)")
    max_layer_ratio: float = Field(0.9, gt=0.0, lt=1.0, description="most any one layer may lose")
    iterative_steps: int | None = Field(
        None, ge=1, le=200,
        description="pruning steps (importance re-estimated each step); default 1 with ratio, 20 with "
                    "target_macs_ratio, where the ratio grows by max_layer_ratio/steps per step")
    ignored_layers: list[str] = Field(
        [],
        description="module names or globs (e.g. 'layer4.*') whose output channels stay; the final "
                    "classifier is always kept")
    taylor_batches: int = Field(4, ge=1, le=1000, description="training batches of gradients per step for taylor")
    batch_size: int = Field(64, ge=1, le=65536, description="batch size of the taylor gradient batches and of calibration forwards")

    @model_validator(mode="before")
    @classmethod
    def _one_target(cls, data):
        if isinstance(data, dict) and data.get("target_latency_ratio") is not None:
            if data.get("ratio") is not None or data.get("target_macs_ratio") is not None:
                raise ValueError("give one of ratio, target_macs_ratio or target_latency_ratio")
            return data
        return ratio_or_macs_target(data, "ratio")

    @model_validator(mode="after")
    def _sensitivity_needs_target(self):
        if self.scope != "sensitivity" and (self.target_latency_ratio is not None or self.remove_blocks):
            raise ValueError("target_latency_ratio and remove_blocks choose what to remove by measured output error "
                             "(and latency): use scope: sensitivity")
        if self.scope == "sensitivity" and self.target_macs_ratio is None and self.target_latency_ratio is None:
            raise ValueError("scope 'sensitivity' chooses per-layer ratios for a budget: give target_macs_ratio "
                             "(e.g. 0.5) or target_latency_ratio instead of ratio")
        if self.scope == "sensitivity" and self.criterion == "taylor":
            raise ValueError("scope 'sensitivity' ranks channels without labels: use criterion l1, l2, bn_scale or "
                             "activation, not taylor")
        return self

    def labels_needed(self) -> str | None:
        return "taylor importance uses gradients of the task's loss; l1, l2 and bn_scale need no data" \
            if self.criterion == "taylor" else None



def _importance(criterion: str) -> tp.importance.Importance:
    return {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "taylor": tp.importance.TaylorImportance,
        "bn_scale": tp.importance.BNScaleImportance,
        "activation": ActivationImportance,
    }[criterion]()


def _taylor_gradients(model: nn.Module, task: Task, batches: int, batch_size: int, seed: int) -> None:
    """Accumulate dL/dw over a few training batches (the task's loss) for TaylorImportance."""
    device = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    loader = task.loader("train", batch_size=batch_size, shuffle=True, seed=seed)
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        task.loss(model, [t.to(device) for t in batch]).backward()


def _out_channels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_features if isinstance(m, nn.Linear) else m.out_channels for n, m in weight_layers(model).items()}


def _shapes(output: object) -> list[tuple[int, ...]]:
    """Shapes of the tensors a forward returned (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if isinstance(output, (tuple, list, dict)):
        return [s for item in (output.values() if isinstance(output, dict) else output) for s in _shapes(item)]
    raise TypeError(f"the model returned a {type(output).__name__}, not tensors")


def _by_sensitivity(model: nn.Module, example: torch.Tensor, inputs: torch.Tensor, importance, ignored: list[nn.Module],
                    multiple: int, config: StructuredConfig, macs0: int, ctx: StageContext) -> nn.Module:
    """Per-layer ratios by measured output error (:mod:`edgecompress.prune.sensitivity`) within a MAC or latency
    budget; records the curves (and the predicted latencies)."""
    ratios = sorted(r for r in config.sensitivity_ratios if 0 < r <= config.max_layer_ratio)
    latency = rescore = None
    budget = lambda m: count_macs(m, example) / macs0  # noqa: E731  (both budgets: a ratio to the unpruned model)
    if config.target_latency_ratio is not None:
        budget = latency = LatencyCost(model, ctx.export.runtime, ctx.export.threads, ctx.export.batch,
                                       tuple(example.shape[1:]), f"{STAGE}.target_latency_ratio")
        rescore = lambda m, allocation: latency.rescore(m, example, allocation)  # noqa: E731
    fraction = config.target_latency_ratio or config.target_macs_ratio
    names = {m: n for n, m in model.named_modules()}
    ignored_names = [names[sub] for m in ignored for sub in m.modules()]
    dense = None  # the unpruned outputs, which later steps' errors are measured against
    if config.sensitivity_steps > 1:
        with torch.no_grad():
            dense = [model.eval()(x) for x in inputs.split(config.batch_size)]
    steps, pruned = [], model
    with progress(ctx.progress) as bar:  # no explain_failures: its hooks would be deep-copied with the model
        task = bar.add_task(f"{STAGE} sensitivity", total=None)
        for step in range(1, config.sensitivity_steps + 1):
            if isinstance(importance, ActivationImportance):
                importance.moments = input_moments(pruned, inputs)
            modules = dict(pruned.named_modules())
            pruned, allocation, spent = sensitivity.prune_to_budget(
                pruned, example, inputs, importance, [modules[n] for n in ignored_names], multiple, budget,
                fraction ** (step / config.sensitivity_steps), ratios, config.batch_size,
                config.recalibrate_bn, dense if step > 1 else None, rescore, config.remove_blocks,
                progress=lambda done, total: bar.update(task, completed=done, total=total))
            steps.append({
                "budget_ratio": round(spent, 4), "unmeasured": allocation.unmeasured,
                "layers": {c.name: {"chosen": round(c.chosen, 4), "ratios": [round(r, 4) for r in c.ratios],
                                    "errors": [float(f"{e:.4g}") for e in c.errors]} for c in allocation.curves
                           if not c.block},
                "removed_blocks": [c.name for c in allocation.curves if c.block and c.chosen]})
    ctx.info["sensitivity"] = {"samples": len(inputs), "steps": steps, "budget": "macs" if latency is None else
                               "measured latency", "metric": "relative squared output error vs the unpruned model"}
    if latency is not None:
        predicted = latency.table.raw(pruned, latency.input_shape) / latency.table.raw(model, latency.input_shape)
        measured = spent  # the last step's measurement, which the budget was checked on
        ctx.info["latency"] = {
            "measured_ratio": round(measured, 4), "predicted_ratio": round(predicted, 4),
            "units_timed": latency.table.measured, "models_timed": latency.measured,
            "how": f"{ctx.export.runtime}, {ctx.export.threads} thread(s), batch {ctx.export.batch}; measured: the "
                   "pruned and the original model side by side in a worker process (median run of each burst, "
                   "median over rounds of the ratio); predicted: blocks timed alone, summed"}
        if measured > config.target_latency_ratio:
            raise EdgeCompressError(
                f"measured latency reached only {measured:.3f}x of the original, above target_latency_ratio "
                f"{config.target_latency_ratio}", where=f"{STAGE}.target_latency_ratio",
                fix=f"raise max_layer_ratio (now {config.max_layer_ratio}) or add larger sensitivity_ratios, or "
                    "shorten ignored_layers")
    return pruned


@register(STAGE, StructuredConfig, devices=CPU_AND_CUDA)
def prune_structured(model: nn.Module, config: StructuredConfig, ctx: StageContext) -> nn.Module:
    """Remove whole channels/filters (torch-pruning dependency graph) so params and MACs really shrink.

    Coupled layers (residual adds, concatenations, depthwise convs, BatchNorm) are pruned consistently;
    the final classifier and ``ignored_layers`` keep their output channels. Follow with ``finetune``.
    """
    task = ctx.require_task(STAGE)
    model = copy.deepcopy(model)
    was_training = model.training
    example = task.example_inputs(1).to(next(model.parameters()).device)
    ignored_names = resolve_layers(model, config.ignored_layers, where=f"{STAGE}.ignored_layers")
    with explain_failures(model, "running the model", STAGE), torch.no_grad():
        out_shapes = _shapes(model.eval()(example))
    with explain_failures(model, "tracing the model", STAGE):
        classifiers = output_layers(build_graph(model, example))
    modules = dict(model.named_modules())
    skipped = ignored_names | {n for n, m in modules.items() if m in classifiers}
    before = _out_channels(model)
    params0, macs0 = count_params(model), count_macs(model, example)
    target = config.target_macs_ratio
    steps = config.iterative_steps or (20 if target is not None else 1)
    multiple = align.resolve(config.round_to, ctx.export.runtime, f"{STAGE}.round_to")
    importance, inputs = _importance(config.criterion), None
    if config.criterion == "activation" or config.scope == "sensitivity" or config.recalibrate_bn:
        inputs = calibration_samples(ctx, config.calib_samples, STAGE).to(example.device)
    ignored = [modules[n] for n in sorted(skipped)]
    if config.scope == "sensitivity":
        model = _by_sensitivity(model, example, inputs, importance, ignored, multiple, config, macs0, ctx)
        macs, done = count_macs(model, example), 1
    else:
        with explain_failures(model, "building the torch-pruning dependency graph", STAGE):
            pruner = AlignedPruner(
                model, example, importance, global_pruning=config.scope == "global",
                pruning_ratio=config.max_layer_ratio if target is not None else config.ratio,
                max_pruning_ratio=config.max_layer_ratio, iterative_steps=steps,
                ignored_layers=ignored, round_to=multiple if multiple > 1 else None,
            )
        macs, done = macs0, 0
        while done < steps and (target is None or macs > target * macs0):
            if config.criterion == "taylor":
                _taylor_gradients(model, task, config.taylor_batches, config.batch_size, ctx.seed + done)
            if isinstance(importance, ActivationImportance):
                importance.moments = input_moments(model, inputs)
            with explain_failures(model, "pruning with torch-pruning", STAGE):
                pruner.step()
            done += 1
            with explain_failures(model, "running the pruned model", STAGE):
                macs = count_macs(model, example)
    model.zero_grad(set_to_none=True)
    if config.recalibrate_bn:
        ctx.info["bn_recalibrated"] = reestimate_bn(model, inputs.split(config.batch_size))
    with explain_failures(model, "running the pruned model", STAGE), torch.no_grad():
        new_shapes = _shapes(model.eval()(example))
    if new_shapes != out_shapes:
        raise EdgeCompressError(f"pruning changed the output shapes from {out_shapes} to {new_shapes}",
                                where=STAGE, fix="add the layers that produce the output to ignored_layers")
    model.train(was_training)
    after = _out_channels(model)
    kept = [n for n in before if n not in skipped]
    ctx.info.update({
        "criterion": config.criterion, "scope": config.scope, "steps": done, "ignored_layers": sorted(skipped),
        "round_to": multiple,
        "channels": {n: [before[n], after.get(n, 0)] for n in before},  # 0: its block was removed
        "params_before": params0, "params_after": count_params(model),
        "macs_before": macs0, "macs_after": macs, "macs_ratio": macs / macs0,
        "channel_ratio": 1 - sum(after.get(n, 0) for n in kept) / max(1, sum(before[n] for n in kept)),
    })
    if target is not None and macs > target * macs0:
        raise EdgeCompressError(
            f"MACs reached only {macs / macs0:.3f}x of the original, above target_macs_ratio {target}",
            where=f"{STAGE}.target_macs_ratio",
            fix=f"raise max_layer_ratio (now {config.max_layer_ratio}), shorten ignored_layers, or use scope: global",
        )
    return model
