"""``prune.shifter``: DNNShifter's zero-data structured step — an unstructured-sparse model becomes a smaller
dense one with the same outputs.

1. Fold every BatchNorm that directly follows a conv or linear layer into it (``W' = diag(g/s) W``,
   ``b' = beta + (b - mu) g/s``, :func:`edgecompress.nn.bn.fold_batchnorms`). The BatchNorm module stays in
   place as an exact identity (weight 1, bias 0, mean 0, var 1, eps 0) so that checkpoints rebuild the same
   architecture; ONNX export drops it.
2. A filter (conv output channel / linear row) whose folded weights are all zero outputs a constant: its
   folded bias. With torch-pruning's dependency graph every channel coupled to it (residual adds, concats,
   depthwise convs) is found; the channel goes only if EVERY producer in its group is zero there.
3. Constant propagation (our correction; DNNShifter's code drops the constant): the constant value the removed
   channel still carries is read at every consumer's input in a forward pass of random data (so it is
   whatever activation, pooling or residual add it passed through), checked to be constant, and added to the
   consumer's bias: ``b += sum_k W[:, c, k] * v`` for a conv, ``b += W[:, c] * v`` for a linear. A conv with
   zero padding would see that constant only partly at the image border, so a channel whose constant is
   non-zero and feeds a padded conv is kept (reported as ``kept: constant into padded conv``): exactness first.
Outputs are unchanged up to float rounding. Layers it cannot handle are left intact and listed.
"""

from __future__ import annotations

import copy
import time

import torch
import torch_pruning as tp
from pydantic import Field
from torch import nn

from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.measure.counts import count_params
from edgecompress.nn.bn import fold_batchnorms
from edgecompress.nn.capture import capture
from edgecompress.nn.layers import build_graph, is_depthwise, weight_layers
from edgecompress.prune import align
from edgecompress.prune.analysis import output_layers
from edgecompress.registry import register

STAGE = "prune.shifter"
_CONV = nn.modules.conv._ConvNd
_BLOCKING = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm, nn.PReLU, nn.Embedding,
             nn.MultiheadAttention, nn.RNNBase)


class ShifterConfig(align.AlignedConfig):
    """Settings of ``prune.shifter`` (no data needed: only the input shape, taken from the task if given)."""

    input_shape: list[int] | None = Field(
        None, description="per-sample input shape, e.g. [1, 28, 28]; default: the task's input shape")
    fold_bn: bool = Field(True, description="fold BatchNorm into the conv before it (needed to see zero-gamma "
                                            "channels as dead; the BN becomes an exact identity)")


def _is_grouped(m: nn.Module) -> bool:
    """A grouped conv that is not depthwise: its channel bookkeeping is not handled here (left intact)."""
    return isinstance(m, _CONV) and m.groups > 1 and not is_depthwise(m)


def _dead_rows(m: nn.Module) -> list[int]:
    return torch.nonzero(m.weight.detach().flatten(1).abs().sum(1) == 0).flatten().tolist()


def _constant(x: torch.Tensor, channel: int) -> float | None:
    """The value of ``x[:, channel]`` when it is the same across batch and positions, else None."""
    values = x[:, channel]
    v = values.flatten()[0]
    return float(v) if float((values - v).abs().max()) <= 1e-6 * (1 + abs(float(v))) else None


class _Plan:
    """Which root channels of one group can go, and the bias corrections their constants need."""

    def __init__(self, roots: list[int]):
        self.ok = set(roots)
        self.reasons: dict[int, str] = {}
        self.corrections: list[tuple[nn.Module, int, list[int], float]] = []  # consumer, root, in idxs, value

    def drop(self, root: int, reason: str) -> None:
        if root in self.ok:
            self.ok.discard(root)
            self.reasons[root] = reason


def _plan(group, graph, outputs, names, model, example) -> _Plan:
    items = [(item.dep.target.module, item.dep.handler, list(zip(item.idxs, item.root_idxs))) for item in group.items]
    plan = _Plan(sorted({root for _, _, pairs in items for _, root in pairs}))
    consumers = []
    for module, handler, pairs in items:
        for idx, root in pairs:
            if isinstance(module, (nn.Parameter, *_BLOCKING)) or _is_grouped(module):
                plan.drop(root, f"coupled to unsupported layer {names.get(module, type(module).__name__)}")
            elif isinstance(module, (_CONV, nn.Linear)) and (graph.is_out_channel_pruning_fn(handler)
                                                            or is_depthwise(module)):
                if module in outputs:
                    plan.drop(root, f"coupled to output layer {names[module]}")
                elif bool(module.weight[idx].any()):
                    plan.drop(root, f"non-zero in coupled layer {names[module]}")
            elif isinstance(module, (_CONV, nn.Linear)) and graph.is_in_channel_pruning_fn(handler):
                consumers.append((module, idx, root))
    inputs = {}
    for module in {m for m, _, _ in consumers}:
        try:
            inputs[module] = capture(model, module, example, "input")
        except LookupError:
            pass
    for module, idx, root in consumers:
        if module not in inputs:
            plan.drop(root, f"consumer {names[module]} not reached by the forward pass")
            continue
        v = _constant(inputs[module], idx)
        if v is None:
            plan.drop(root, f"input of {names[module]} is not constant in this channel")
        elif v != 0 and isinstance(module, _CONV) and any(p != 0 for p in _padding(module)):
            plan.drop(root, f"constant {v:.3g} into padded conv {names[module]}")
        elif v != 0:
            plan.corrections.append((module, root, [idx], v))
    return plan


def _padding(conv: nn.Module) -> tuple[int, ...]:
    if conv.padding == "same":
        return tuple(k // 2 for k in conv.kernel_size)
    if conv.padding == "valid":
        return (0,)
    return tuple(conv.padding)


@torch.no_grad()
def _apply_corrections(plan: _Plan) -> None:
    for module, root, idxs, v in plan.corrections:
        if root not in plan.ok:
            continue
        w = module.weight[:, idxs]  # conv: [out, k_in, *kernel]; linear: [out, k_in]
        delta = w.flatten(1).sum(1) * v
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        module.bias.add_(delta)


def shift(model: nn.Module, example: torch.Tensor, fold_bn: bool = True, multiple: int = 1) -> tuple[nn.Module, dict]:
    """Return a copy of ``model`` with every removable all-zero channel physically gone, plus a report dict.

    ``example``: any input batch of the right shape (its values do not matter; random is fine). With ``multiple``
    > 1 a layer keeps enough of its dead channels that its channel count is a multiple of it (rounded up:
    live channels never go), see :mod:`edgecompress.prune.align`.
    """
    start = time.perf_counter()
    model = copy.deepcopy(model).eval()
    params_original = count_params(model)
    graph = build_graph(model, example)
    folded, unfolded = fold_batchnorms(model, graph) if fold_bn else ([], [])
    params0 = count_params(model)  # after folding (convs gain a bias): nothing removed -> ratio exactly 1.0
    outputs = output_layers(graph)
    names = {m: n for n, m in model.named_modules()}
    report: dict = {"removed": {}, "kept_dead": {}, "bn_folded": folded, "bn_not_folded": unfolded,
                    "left_intact": sorted(names[m] for m in model.modules()
                                          if isinstance(m, _BLOCKING) or _is_grouped(m))}
    for name, root in weight_layers(model).items():
        dead = [] if root in outputs else _dead_rows(root)
        if not dead:
            continue
        fn = tp.prune_conv_out_channels if isinstance(root, _CONV) else tp.prune_linear_out_channels
        plan = _plan(graph.get_pruning_group(root, fn, idxs=dead), graph, outputs, names, model, example)
        channels = graph.get_out_channels(root)
        kept = channels - len(plan.ok)
        for extra in sorted(plan.ok)[: align.aligned_keep(kept, channels, multiple, up=True) - kept]:
            plan.drop(extra, f"kept for channel alignment (multiples of {multiple})")
        if plan.reasons:
            report["kept_dead"][name] = {str(k): v for k, v in sorted(plan.reasons.items())}
        if plan.ok:
            _apply_corrections(plan)
            graph.get_pruning_group(root, fn, idxs=sorted(plan.ok)).prune()
            report["removed"][name] = len(plan.ok)
    model.zero_grad(set_to_none=True)
    params1 = count_params(model)
    report.update(params_original=params_original, params_before=params0, params_after=params1,
                  params_ratio=params0 / max(1, params1), channels_removed=sum(report["removed"].values()),
                  channels_kept_dead=sum(len(v) for v in report["kept_dead"].values()),
                  seconds=time.perf_counter() - start)
    return model, report


@register(STAGE, ShifterConfig)
def prune_shifter(model: nn.Module, config: ShifterConfig, ctx: StageContext) -> nn.Module:
    """DNNShifter structured step: fold BN, remove all-zero filters (+ coupled channels), keep outputs exact.

    Zero data: a random input of the model's shape drives the dependency graph and reads the constants that
    removed channels still carry (propagated into the next layer's bias, unlike the published code). A model
    with nothing removable comes back with 1.0x params; layers it cannot handle stay and are listed in
    ``left_intact`` / ``kept_dead``. Put it after unstructured pruning (``prune.lottery``, ``prune.magnitude``).
    """
    if config.input_shape is not None:
        shape = tuple(config.input_shape)
    elif ctx.task is not None:
        shape = tuple(ctx.task.input_shape)
    else:
        raise EdgeCompressError("prune.shifter needs the input shape", where=f"{STAGE}.input_shape",
                                fix="give input_shape: [C, H, W] or pass a task")
    device = next(model.parameters()).device
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(ctx.seed)).to(device)
    multiple = align.resolve(config.round_to, ctx.export.runtime, f"{STAGE}.round_to")
    shifted, report = shift(model, example, config.fold_bn, multiple)
    report["round_to"] = multiple
    ctx.info.update(report)
    return shifted
