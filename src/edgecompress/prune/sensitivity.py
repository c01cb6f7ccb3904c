"""Per-layer pruning ratios by measured sensitivity: a MAC target met by removing what the model misses least.

For every torch-pruning group (a layer's output channels and everything coupled to them) the least important
channels are masked, at a few ratios, and the relative squared error of the model's output against the unpruned
output is measured on unlabeled calibration inputs. Masking a group's channels at the inputs of the Conv/Linear
layers that consume them is exactly what removing them does, so no copy is pruned while measuring. Output errors of
independent groups add (approximately), so the ratios solve ``min sum_g err_g(r_g)`` subject to the MAC budget by a
Lagrange multiplier: each group picks the ratio minimising ``err_g(r) - lam * macs_saved_g(r)``, and ``lam`` is
bisected on the MACs of the really pruned model; single groups are then stepped back while the budget still holds
(:func:`refine`), since the multiplier's solutions are too sparse to land near the budget. With a latency cost (:mod:`edgecompress.prune.latency_cost`)
``macs_saved`` is replaced by the latency saved in the deployment runtime, and the budget may be a latency.
torch-pruning has no sensitivity analysis, so it is written here
(in the spirit of the per-layer sensitivity scans of Han et al. and AMC-style budget allocation).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from edgecompress.measure.counts import layer_table
from edgecompress.nn.bn import bn_statistics_kept, reestimate_bn
from edgecompress.nn.capture import forward_with_hooks
from edgecompress.nn.layers import LAYER_TYPES
from edgecompress.nn.rebuild import rebuildable
from edgecompress.nn.replay import PrefixReplay, outer_blocks
from edgecompress.prune import align
from edgecompress.prune.importance import consumers


@rebuildable
class RemovedBlock(nn.Identity):
    """A block that pruning removed: its input passes through, as its residual shortcut carried it. A checkpoint
    records it by name (:mod:`edgecompress.nn.rebuild`), so a resumed run rebuilds the shorter model."""

    def spec(self) -> dict:
        return {}


@dataclass
class GroupCurve:
    """One group's sensitivity: output error and MACs saved at each ratio (ratio 0 first)."""

    name: str  # the group's root layer
    prune_fn: Callable | None  # torch-pruning's function that removes the root's channels (None: a block)
    order: list[int]  # root channels, least important first
    ratios: list[float]
    errors: list[float]
    saved: list[float]  # estimated MACs removed (group layers' MACs times the removed fraction)
    chosen: float = 0.0
    block: bool = False  # a whole block, not a group's channels: ratio 1 replaces it by a RemovedBlock

    @property
    def channels(self) -> int:
        return len(self.order)

    def dropped(self, ratio: float) -> list[int]:
        return self.order[:round(ratio * self.channels)]


@dataclass
class Allocation:
    curves: list[GroupCurve]
    unmeasured: list[str] = field(default_factory=list)  # groups with no Conv/Linear consumer: left whole

    def ratios(self, lam: float) -> dict[str, float]:
        """Each group's ratio minimising ``error - lam * saved`` (group root name -> ratio; 0 left out)."""
        out = {}
        for c in self.curves:
            best = min(range(len(c.ratios)), key=lambda i: c.errors[i] - lam * c.saved[i])
            if c.ratios[best] > 0:
                out[c.name] = c.ratios[best]
        return out


def _mask_hooks(group: tp.dependency.Group, dropped: set[int]) -> list:
    """Forward pre-hooks zeroing the dropped root channels at the inputs of the group's consumers."""
    hooks = []
    for layer, idxs, root_idxs in consumers(group):
        cut = [i for i, r in zip(idxs, root_idxs) if r in dropped]
        if not cut:
            continue
        dim = 1 if isinstance(layer, nn.modules.conv._ConvNd) else -1
        size = layer.in_channels if dim == 1 else layer.in_features
        mask = torch.ones(size)
        mask[cut] = 0.0

        def zero(module, args, mask=mask, dim=dim):
            shape = [1] * args[0].dim()
            shape[dim] = -1
            return (args[0] * mask.to(args[0]).view(shape), *args[1:])

        hooks.append(layer.register_forward_pre_hook(zero))
    return hooks


def _relative_error(model: nn.Module, inputs: list[torch.Tensor], replay: PrefixReplay, skip: list[nn.Module],
                    recalibrate: bool, targets: list[torch.Tensor]) -> float:
    """The output error against ``targets`` with the current masks, after re-estimating BatchNorm statistics if
    ``recalibrate``."""
    err = ref = 0.0

    def run(i: int, x: torch.Tensor) -> torch.Tensor:
        with replay.replaying(skip, i):
            return model(x)

    with torch.no_grad(), bn_statistics_kept(model):
        if recalibrate:
            reestimate_bn(model, inputs, forward=run)
        for i, (x, y) in enumerate(zip(inputs, targets)):
            err += float((run(i, x) - y).pow(2).sum())
            ref += float(y.pow(2).sum())
    return err / max(ref, 1e-12)


def removable_blocks(model: nn.Module, example: torch.Tensor, ignored: list[nn.Module]) -> list[nn.Module]:
    """Blocks (the outermost children of sequential containers) that can be removed whole: their output has their
    input's shape (a residual block, whose shortcut is then all that is left), and they hold a Conv/Linear layer and
    none of ``ignored``."""
    shapes: dict[nn.Module, bool] = {}

    def same(module, args, output):
        shapes[module] = bool(args) and isinstance(output, torch.Tensor) and isinstance(args[0], torch.Tensor) \
            and args[0].shape == output.shape

    blocks = outer_blocks(model)
    forward_with_hooks(model.eval(), example, [b.register_forward_hook(same) for b in blocks])
    banned = {m for layer in ignored for m in layer.modules()}
    return [b for b in blocks if shapes.get(b) and any(isinstance(m, LAYER_TYPES) for m in b.modules())
            and not banned & set(b.modules())]


def measure(model: nn.Module, groups: list[tp.dependency.Group],
            importance: Callable[[tp.dependency.Group], torch.Tensor], inputs: torch.Tensor, example: torch.Tensor,
            ratios: list[float], multiple: int, batch_size: int = 32, recalibrate: bool = False,
            targets: list[torch.Tensor] | None = None, blocks: list[nn.Module] = (),
            progress: Callable[[int, int], None] | None = None) -> Allocation:
    """Sensitivity curves of ``groups`` of ``model`` (channels ranked by ``importance``) at ``ratios``, and of
    removing each of ``blocks`` whole (replaced by the identity), with BatchNorm statistics re-estimated on
    ``inputs`` for each measurement if ``recalibrate``. Errors are against ``model``'s own outputs, or the increase
    of the error against ``targets`` (per batch of ``batch_size``, e.g. the outputs of the model before an earlier
    pruning step)."""
    names = {m: n for n, m in model.named_modules()}
    macs = {row["name"]: row["macs"] for row in layer_table(model.eval(), example)}
    batches = list(inputs.split(batch_size))
    replay = PrefixReplay(model, batches)  # the unpruned outputs, and the blocks before each group replayed
    targets = targets or replay.reference
    baseline = _relative_error(model, batches, replay, [], recalibrate, targets) if targets is not replay.reference \
        else 0.0
    allocation = Allocation([])
    for done, group in enumerate(groups):
        root = group[0].dep.target.module
        if not consumers(group):
            allocation.unmeasured.append(names[root])
            continue
        order = torch.argsort(importance(group).float()).tolist()
        channels = len(order)
        layers = {item.dep.layer for item in group if isinstance(item.dep.layer, LAYER_TYPES)}
        group_macs = sum(macs.get(names[layer], 0) for layer in layers)
        curve = GroupCurve(names[root], group[0].dep.handler, order, [0.0], [0.0], [0.0])
        last_keep, skip = channels, replay.before([layer for layer, _, _ in consumers(group)])
        for ratio in ratios:
            keep = align.aligned_keep(max(1, round(channels * (1 - ratio))), channels, multiple)
            if keep >= last_keep:  # alignment made it the same as a smaller ratio
                continue
            last_keep, removed = keep, 1 - keep / channels
            hooks = _mask_hooks(group, set(curve.dropped(removed)))
            try:
                error = _relative_error(model, batches, replay, skip, recalibrate, targets) - baseline
            finally:
                for h in hooks:
                    h.remove()
            curve.ratios.append(removed)
            curve.errors.append(error)
            curve.saved.append(removed * group_macs)
        allocation.curves.append(curve)
        if progress:
            progress(done + 1, len(groups) + len(blocks))
    for done, block in enumerate(blocks, start=len(groups) + 1):
        hook = block.register_forward_hook(lambda module, args, output: args[0])
        try:
            error = _relative_error(model, batches, replay, replay.before([block]), recalibrate, targets) - baseline
        finally:
            hook.remove()
        block_macs = sum(macs.get(names[m], 0) for m in block.modules() if isinstance(m, LAYER_TYPES))
        allocation.curves.append(GroupCurve(names[block], None, [], [0.0, 1.0], [0.0, error], [0.0, block_macs],
                                            block=True))
        if progress:
            progress(done, len(groups) + len(blocks))
    return allocation


def solve(allocation: Allocation, pruned_cost: Callable[[dict[str, float]], float], target: float,
          iterations: int = 14) -> tuple[dict[str, float], float]:
    """The ratios (and their real cost) with the least summed error whose pruned model costs ``<= target``:
    bisection of the multiplier on ``pruned_cost`` (MACs, or latency, of the model pruned with those ratios)."""
    errors = [e for c in allocation.curves for e in c.errors if e > 0]
    saved = [s for c in allocation.curves for s in c.saved if s > 0]
    if not errors or not saved:
        return {}, pruned_cost({})
    lo = math.log(min(errors) / max(saved)) - 2  # lam so small that nothing is worth removing
    hi = math.log(max(errors) / min(saved)) + 2  # lam so large that every group takes its largest ratio
    best = allocation.ratios(math.exp(hi))
    best_cost = pruned_cost(best)
    for _ in range(iterations if best_cost <= target else 0):
        mid = (lo + hi) / 2
        ratios = allocation.ratios(math.exp(mid))
        cost = pruned_cost(ratios)
        if cost <= target:
            hi, best, best_cost = mid, ratios, cost
        else:
            lo = mid
    for curve in allocation.curves:
        curve.chosen = best.get(curve.name, 0.0)
    return best, best_cost


def refine(allocation: Allocation, chosen: dict[str, float], cost: float,
           pruned_cost: Callable[[dict[str, float]], float], target: float, tries: int = 6
           ) -> tuple[dict[str, float], float]:
    """Give back pruning that the budget does not need. The multiplier's solutions are sparse (a curve moves in
    coarse steps, a block is one step), so the bisection's choice can cost well under ``target``. Single groups are
    stepped back to their next smaller ratio, the steps that cut the error most per unit of saving lost first,
    while the cost predicted from the curves' savings (scaled to the cost measured so far) stays within
    ``target``; each step is kept only if the real cost confirms it (at most ``tries`` costs measured)."""
    index = {c.name: c.ratios.index(chosen[c.name]) for c in allocation.curves if c.name in chosen}
    curves = {c.name: c for c in allocation.curves}
    total = sum(curves[n].saved[i] for n, i in index.items())
    if total <= 0 or cost >= 1.0:
        return chosen, cost
    per_saved = (1.0 - cost) / total  # cost that one unit of predicted saving is worth here

    def step(name: str) -> tuple[float, float]:  # (error removed, saving lost) by stepping ``name`` back
        c, i = curves[name], index[name]
        return c.errors[i] - c.errors[i - 1], c.saved[i] - c.saved[i - 1]

    while tries > 0:
        options = [n for n in index if index[n] > 0 and step(n)[0] > 0
                   and cost + max(step(n)[1], 0.0) * per_saved <= target]
        if not options:
            break
        name = max(options, key=lambda n: step(n)[0] / max(step(n)[1], 1e-12))
        trial = dict(chosen)
        index[name] -= 1
        trial[name] = curves[name].ratios[index[name]]
        if not trial[name]:
            del trial[name]
        tries -= 1
        measured = pruned_cost(trial)
        if measured <= target:
            chosen, cost = trial, measured
        else:
            index[name] = -1  # this step does not fit: never try this group again
    for curve in allocation.curves:
        curve.chosen = chosen.get(curve.name, 0.0)
    return chosen, cost


def apply(model: nn.Module, example: torch.Tensor, allocation: Allocation, ratios: dict[str, float]) -> nn.Module:
    """A copy of ``model`` with each measured group's least important channels removed at its ratio, and each
    measured block with ratio 1 replaced by the identity (``ratios``: group root or block name -> ratio)."""
    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    graph = tp.DependencyGraph().build_dependency(clone, example_inputs=example)
    for curve in allocation.curves:
        dropped = curve.dropped(ratios.get(curve.name, 0.0))
        if dropped:
            graph.get_pruning_group(modules[curve.name], curve.prune_fn, dropped).prune()
    for curve in allocation.curves:
        if curve.block and ratios.get(curve.name):
            clone.set_submodule(curve.name, RemovedBlock())
    return clone


def prune_to_budget(model: nn.Module, example: torch.Tensor, inputs: torch.Tensor,
                    importance: Callable[[tp.dependency.Group], torch.Tensor], ignored: list[nn.Module], multiple: int,
                    cost: Callable[[nn.Module], float], target: float, ratios: list[float], batch_size: int = 32,
                    recalibrate: bool = False, targets: list[torch.Tensor] | None = None,
                    rescore: Callable[[nn.Module, Allocation], None] | None = None, blocks: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> tuple[nn.Module, Allocation, float]:
    """``model`` pruned (a copy) until its ``cost`` (e.g. MACs) is at most ``target``, with per-group ratios by
    sensitivity on ``inputs`` (errors against ``targets``, see :func:`measure`), weighing the removal of whole
    blocks too if ``blocks`` (:func:`removable_blocks`); ``rescore`` may replace the
    curves' estimated MAC savings by another saving (latency) before the ratios are solved. Returns the pruned
    model, the measured curves with each group's chosen ratio, and the pruned model's cost."""
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.modules.conv._ConvNd, nn.Linear)))
    allocation = measure(model, groups, importance, inputs, example, ratios, multiple, batch_size, recalibrate,
                         targets, removable_blocks(model, example, ignored) if blocks else [], progress)
    if rescore is not None:
        rescore(model, allocation)
    seen: dict[tuple, tuple[nn.Module, float]] = {}

    def cost_of(chosen: dict[str, float]) -> float:
        key = tuple(sorted(chosen.items()))
        if key not in seen:
            pruned = apply(model, example, allocation, chosen)
            seen[key] = pruned, cost(pruned)
        return seen[key][1]

    best, spent = refine(allocation, *solve(allocation, cost_of, target), cost_of, target)
    return seen[tuple(sorted(best.items()))][0], allocation, spent
