"""Errors from torch-pruning or from a pruned model's forward, turned into messages that name the layer to keep.

A failure deep inside torch-pruning (or a forward that hard-codes a size) says nothing about which of the user's
layers to leave alone; :func:`explain_failures` watches the forward with hooks and, when something raises, names
the module that was running and the last pruned layer before it, and suggests ``ignored_layers``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.nn.layers import LAYER_TYPES


def _suspect_from_traceback(exc: BaseException, names: dict[nn.Module, str]) -> str | None:
    """The innermost prunable layer of the model referenced by a local variable where ``exc`` was raised."""
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            for obj in (value, getattr(value, "module", None), getattr(getattr(value, "target", None), "module", None)):
                if isinstance(obj, LAYER_TYPES) and obj in names:
                    return names[obj]
    return None


@contextmanager
def explain_failures(model: nn.Module, doing: str, stage: str) -> Iterator[None]:
    """Turn an exception from torch-pruning or from the pruned model's forward into an EdgeCompressError
    that names the module involved and the layer to add to ``ignored_layers``."""
    names = {m: n for n, m in model.named_modules()}
    running: list[nn.Module] = []
    finished: list[str] = []

    def before(module, args):
        running.append(module)

    def after(module, args, output):
        running.pop()
        if isinstance(module, LAYER_TYPES):
            finished.append(names[module])

    hooks = [h for m in model.modules() for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        yield
    except EdgeCompressError:
        raise
    except Exception as exc:
        in_forward = bool(running)  # forward hooks of the modules still running when the error came
        inside = next((names[m] for m in reversed(running) if names.get(m)), None)
        # a failing forward is usually caused by the last pruned layer before the failing operation
        suspect = (finished[-1] if finished else None) if in_forward else _suspect_from_traceback(exc, names)
        if suspect is None:
            fix = ("make sure the model's forward returns tensors (a tensor, tuple, list or dict), or add the "
                   "layer involved to ignored_layers (see `edgecompress inspect`)")
        else:
            fix = f"add `ignored_layers: [{suspect}]` to the {stage} stage to keep that layer's channels"
            if in_forward:
                fix += " (it feeds the failing operation; a forward that hard-codes a size, e.g. view(-1, 512), is "\
                       "the usual cause)"
        place = f" inside module {inside!r}" if inside else ""
        raise EdgeCompressError(f"{doing} failed{place}: {type(exc).__name__}: {exc}", where=stage, fix=fix) from exc
    finally:
        for h in hooks:
            h.remove()
