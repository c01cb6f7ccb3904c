"""Check the model and the data against each other before any work, so that a mismatch fails up front
with an error that says what is wrong, where, and how to fix it (rather than mid-run, or not at all).

``check_task`` runs when a task is loaded: same per-sample shape in every split, finite inputs, and for
labelled data at least 2 classes with labels in ``0..num_classes-1``. ``check_model_and_task`` runs once
the model is built: it accepts the task's inputs, outputs one logit per class, and its weights are finite.
"""

from __future__ import annotations

import inspect
import itertools
from typing import TYPE_CHECKING

import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.zoo.loading import check_input

if TYPE_CHECKING:
    from edgecompress.tasks import Task

_SPLITS = ("train", "val", "test")
_MAX_LISTED = 5  # names / values shown per problem


def _listed(items: list) -> str:
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(map(str, items[:_MAX_LISTED])) + more


# ---- the model against the task -----------------------------------------------------------------------


def check_model_and_task(model: nn.Module, task: Task) -> None:
    """``model`` runs on ``[2, *task.input_shape]``, outputs ``[2, task.num_classes]`` and has finite weights."""
    if task.kind in ("classification", "unlabeled"):
        check_input(model, task.input_shape, task.num_classes)
    else:
        _check_runs(model, task)
    check_finite_weights(model)


def _check_runs(model: nn.Module, task: Task) -> None:
    """The model accepts the task's example inputs (token ids and mask, say); a tokenizer whose ids reach past the
    model's embedding table is named (random text would otherwise fail, or silently index the wrong rows)."""
    from edgecompress.tasks.base import call

    vocab, embeddings = getattr(task, "vocab_size", None), getattr(model, "get_input_embeddings", None)
    table = embeddings() if callable(embeddings) else None
    rows = getattr(table, "num_embeddings", None)
    if vocab and rows and vocab > rows:
        raise EdgeCompressError(f"the data's tokenizer has {vocab:,} token ids, but the model's embedding table holds "
                                f"{rows:,}", where="data.tokenizer",
                                fix="tokenize with the model's own tokenizer (data.tokenizer: the model's name or "
                                    "directory; with model.hf it is the default)")

    inputs = task.example_inputs(2)
    try:
        with torch.no_grad():
            call(model, inputs)
    except Exception as err:
        names = ", ".join(inputs) if isinstance(inputs, dict) else "one tensor"
        try:
            signature = f"forward{inspect.signature(model.forward)}"
        except (TypeError, ValueError):
            signature = "its forward"
        raise EdgeCompressError(f"the model does not run on the {task.kind} task's inputs ({names}): "
                                f"{type(err).__name__}: {str(err)[:300]}", where="model",
                                fix=f"the model takes {signature}: use a model whose forward takes {names}") from err


def check_finite_weights(model: nn.Module) -> None:
    """Raise when a parameter or buffer of ``model`` holds NaN or Inf values, naming each such tensor."""
    bad = [f"{name} ({int((~torch.isfinite(t)).sum())} of {t.numel()} values)"
           for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise EdgeCompressError(
            f"the model's weights contain NaN or Inf values: {_listed(bad)}", where="model",
            fix="load weights that are intact (these are damaged, or come from a diverged training run), or "
                "train the model again")


# ---- the data on its own ------------------------------------------------------------------------------


def check_task(task: Task, where: str) -> None:
    """Raise when ``task``'s data cannot be trained or judged on; ``where`` names the data source."""
    _check_shapes(task, where)
    _check_finite_inputs(task, where)
    if task.has_labels and task.kind == "classification":
        _check_label_range(task, where)
        _check_classes(task, where)


def _check_shapes(task: Task, where: str) -> None:
    for split in _SPLITS:
        shape = tuple(task.split(split).tensors[0].shape[1:])
        if shape != tuple(task.input_shape):
            raise EdgeCompressError(
                f"the {split} split's samples have shape {list(shape)}, but the task's input shape (the train "
                f"split's) is {list(task.input_shape)}", where=where,
                fix="give every split the same per-sample shape (tensors file: x_test shaped like x), or set "
                    "data.input_shape to reshape them all")


def _check_finite_inputs(task: Task, where: str) -> None:
    counts = []
    for split in _SPLITS:
        x = task.split(split).tensors[0]
        if len(x) == 0:
            raise EdgeCompressError(f"the {split} split is empty", where=where,
                                    fix="give more data (every split needs samples)")
        bad = int((~torch.isfinite(x.reshape(len(x), -1))).any(dim=1).sum())
        if bad:
            counts.append(f"{bad} of {len(x)} {split} samples")
    if counts:
        raise EdgeCompressError(
            f"the inputs contain NaN or Inf values: {', '.join(counts)}", where=where,
            fix="repair or drop those samples (keep = np.isfinite(x).reshape(len(x), -1).all(1) marks the good "
                "ones: save x and y with only those rows)")


def _check_label_range(task: Task, where: str) -> None:
    top = task.num_classes - 1
    for split in _SPLITS:
        y = task.split(split).tensors[1]
        outside = y[(y < 0) | (y > top)]
        if len(outside):
            raise EdgeCompressError(
                f"labels must be class indices 0..{top} (num_classes {task.num_classes}); the {split} split has "
                f"{len(outside)} outside that range: {_listed(sorted(set(outside.tolist())))}", where=where,
                fix="save the labels as 0..classes-1, or raise data.num_classes (tensors files: leave it out to "
                    "use the largest label + 1)")


def _check_classes(task: Task, where: str) -> None:
    present = sorted(set(torch.cat([task.split(s).tensors[1] for s in _SPLITS]).tolist()))
    if len(present) < 2:
        raise EdgeCompressError(
            f"the data has {len(present)} class ({_listed(present)}); a classifier needs at least 2 classes (on "
            "one class every prediction is right, so accuracy says nothing)", where=where,
            fix="add samples of the other classes, labelled 0..classes-1")
