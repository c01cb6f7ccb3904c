"""Sequential calibration: change a network layer by layer from statistics of its calibration activations, each
layer seeing the activations of the layers already changed — the one engine of GPTQ (``quant.weight``,
``quant.mixed``), ``recover.mimic`` and ``recover.bias``.

:func:`run_sequential` visits the target layers in forward order. For each it runs every calibration batch up
to the layer, hands ``observe(name, batch)`` the layer's input (its output too when asked; with a
``reference`` model, the output of the reference's layer of the same name on the reference's own
activations), then calls ``apply(name)``, which changes the layer from what ``observe`` accumulated. With ``propagate`` (the default)
the next layers see the outputs of the changed model; ``propagate=False`` shows every layer the activations of
the model as it was at the start (each block is run from a copy taken before its layers change).

Granularity, and the memory bound. :func:`blocks` splits the model into a chain of blocks: recursively, a
module whose called children run one after another (each child's only argument is the previous child's
output, and the last child's output is the module's) is replaced by those children, so a CNN becomes its
layers, with each residual block kept whole. The chain must reproduce the model's output bit for bit on two
samples. The engine caches the activations at one block boundary for every calibration sample: it runs the
current block from its cached inputs up to each of its target layers in turn (re-running the block's prefix,
never the model's), then runs the changed block, replacing its inputs batch by batch by its outputs. Memory:
calibration samples x the larger of one block's input and output, plus one batch (twice that with a
``reference``). A model that is not such a chain (or whose ``reference`` does not run as the same chain) is one
block: its cache is the inputs themselves and every layer re-runs the model's prefix, batch by batch.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edgecompress.measure.cost import CostMeter
from edgecompress.nn.capture import capture, capture_io, forward_with_hooks


@dataclass(frozen=True)
class LayerBatch:
    """One calibration batch at the layer being calibrated."""

    index: int  # the batch's number (batches: ``inputs.split(batch_size)``)
    input: torch.Tensor  # the layer's input
    output: torch.Tensor | None  # the layer's output before ``apply`` changes the layer (asked with ``outputs``)
    reference: torch.Tensor | None  # the reference's same-named layer's output, on the reference's activations


@dataclass(frozen=True)
class SequentialRun:
    """What :func:`run_sequential` ran: the chain of blocks (``[""]``: the whole model, prefix re-runs) and the
    Conv/Linear FLOPs of its forward passes (:class:`~edgecompress.measure.cost.CostMeter`)."""

    blocks: list[str]
    forward_flops: int


def _split(name: str, module: nn.Module, calls: dict[nn.Module, list]) -> list[str]:
    """``name`` as a chain of its children's names, recursively (``[name]`` when its children are no chain)."""
    (_, args, kwargs, out), = calls[module]
    called = sorted(((calls[c][0][0], n, c) for n, c in module.named_children() if c in calls), key=lambda t: t[0])
    prev = args[0] if len(args) == 1 and not kwargs else None
    for _, _, child in called:
        if len(calls[child]) != 1 or not torch.is_tensor(prev):
            return [name]
        _, c_args, c_kwargs, c_out = calls[child][0]
        if c_kwargs or len(c_args) != 1 or c_args[0] is not prev:
            return [name]
        prev = c_out
    if not called or prev is not out:
        return [name]
    return [b for _, n, child in called for b in _split(f"{name}.{n}" if name else n, child, calls)]


def _runs_as(model: nn.Module, names: list[str], x: torch.Tensor) -> bool:
    """Whether running the blocks ``names`` of ``model`` one after another gives ``model(x)`` exactly."""
    with torch.no_grad():
        h = x
        for name in names:
            h = model.get_submodule(name)(h.clone())
            if not torch.is_tensor(h):
                return False
        out = model(x.clone())
    return torch.is_tensor(out) and torch.equal(out, h)


def blocks(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The chain of blocks ``model`` runs as on ``x`` (module names, see the module docstring); ``[""]``, the
    whole model, when it is not such a chain."""
    calls: dict[nn.Module, list] = {}  # module -> its calls (when it returned, args, kwargs, output)
    clock = itertools.count()

    def record(m, args, kwargs, out):
        calls.setdefault(m, []).append((next(clock), args, kwargs, out))

    handles = [m.register_forward_hook(record, with_kwargs=True) for m in model.modules()]
    forward_with_hooks(model, x.clone(), handles)
    names = _split("", model, calls) if len(calls.get(model, ())) == 1 else [""]
    return names if names == [""] or _runs_as(model, names, x) else [""]


def _inside(layer: str, block: str) -> bool:
    return not block or layer == block or layer.startswith(block + ".")


def _advance(block: nn.Module, cache: list[torch.Tensor]) -> None:
    """Replace each cached batch by ``block``'s output on it (in place: one batch more at most)."""
    with torch.no_grad():
        for i, h in enumerate(cache):
            cache[i] = block(h.clone())


def _batches(block: str, name: str, runner: nn.Module, ref_block: nn.Module | None, cache: list[torch.Tensor],
             ref_cache: list[torch.Tensor], outputs: bool) -> Iterator[LayerBatch]:
    """Each cached batch at layer ``name`` of ``block`` (``runner``: the block to run). When the layer is the
    whole block, the reference's outputs replace its cached inputs: the reference does not change."""
    inner = name[len(block) + 1:] if block else name  # the layer's name inside the block
    for j, h in enumerate(cache):
        x, y = capture_io(runner, inner, h.clone()) if outputs else (capture(runner, inner, h.clone(), "input"), None)
        ref = None
        if ref_block is not None:
            ref = capture(ref_block, inner, ref_cache[j].clone(), "output")
            if not inner:
                ref_cache[j] = ref
        yield LayerBatch(j, x, y, ref)


def run_sequential(model: nn.Module, inputs: torch.Tensor, layers: Sequence[str], *,
                   observe: Callable[[str, LayerBatch], None], apply: Callable[[str], None],
                   reference: nn.Module | None = None, propagate: bool = True, outputs: bool = False,
                   batch_size: int = 64) -> SequentialRun:
    """Calibrate ``layers`` of ``model`` (module names, in forward order, each called once per pass) one after
    another on ``inputs``: ``observe`` every batch of a layer, then ``apply`` its change (see the module
    docstring). ``outputs``: also run each layer for its output (``LayerBatch.output``). Models run as given
    (put them in eval mode); inputs are cloned before each run, never changed."""
    with CostMeter() as meter:
        names = blocks(model, inputs[:2])
        if reference is not None and names != [""] and not _runs_as(reference, names, inputs[:2]):
            names = [""]
        plan = [(b, [n for n in layers if _inside(n, b)]) for b in names]
        if [n for _, todo in plan for n in todo] != list(layers):
            raise ValueError(f"layers {list(layers)} are not all called, in this order, in the blocks {names}")
        cache = list(inputs.split(batch_size))
        ref_cache = list(cache) if reference is not None else []
        last = max((i for i, (_, todo) in enumerate(plan) if todo), default=-1)
        for i, (block, todo) in enumerate(plan[:last + 1]):
            frozen = None if propagate else copy.deepcopy(model.get_submodule(block))
            ref_block = None if reference is None else reference.get_submodule(block)
            for name in todo:
                runner = model.get_submodule(block) if frozen is None else frozen
                for batch in _batches(block, name, runner, ref_block, cache, ref_cache, outputs):
                    observe(name, batch)
                apply(name)
            if i < last:
                _advance(model.get_submodule(block) if frozen is None else frozen, cache)
                if ref_block is not None and todo != [block]:
                    _advance(ref_block, ref_cache)
    return SequentialRun(names, meter.forward)
