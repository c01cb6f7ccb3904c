"""The model a recipe starts from: loaded from its spec and, when it has no weights, trained once on the
task and cached on disk (keyed by model, data, training settings and seed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from edgecompress import distributed, placement, zoo
from edgecompress.checkpoint import load_model, save_model
from edgecompress.tasks import Task
from edgecompress.errors import EdgeCompressError
from edgecompress.recipe import ModelSection, Recipe
from edgecompress.ui import console
from edgecompress.validate import check_model_and_task
from edgecompress.zoo.loading import check_input, load_model as load_from_spec

__all__ = ["build_from_arch", "cache_dir", "check_input", "load"]


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))


def build_from_arch(arch: dict) -> nn.Module:
    """Rebuild a zoo architecture from the descriptor ``zoo.build`` attached to the model (or a transformers model
    from the class and config its checkpoint recorded)."""
    if "hf" in arch:
        from edgecompress.llm.models import build_from_arch as build_hf

        return build_hf(arch)
    return zoo.build(arch["zoo"], tuple(arch["input_shape"]), arch["num_classes"], **arch.get("kwargs", {}))


def _cache_key(recipe: Recipe, model: nn.Module, device: torch.device) -> str:
    """Model spec, data, seed and the built architecture itself (so a changed zoo definition retrains); a baseline
    trained on a GPU is cached apart from the CPU one (their floating-point results differ)."""
    spec = recipe.model.model_dump(mode="json", exclude={"pretrain": {"cache"}})
    key = {"model": spec, "data": recipe.data.model_dump(mode="json"), "seed": recipe.seed, "architecture": repr(model)}
    if device.type != "cpu":
        key["device"] = device.type
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load(recipe: Recipe, task: Task, *, trust_pickle: bool = False, train: bool = True,
         progress: bool = True, device: torch.device = placement.CPU) -> nn.Module:
    """The recipe's model for ``task`` (on the CPU); trained on ``device`` (or taken from the cache) when ``pretrain``
    is set and no weights are given. ``train=False`` only rebuilds the architecture (used to load checkpoints).

    A model to train is checked against the task first (see ``validate.check_model_and_task``), so a
    mismatch fails before training rather than after it. A damaged cache entry is named and retrained."""
    spec = recipe.model
    if spec.hf is not None and spec.pretrain is not None:
        raise EdgeCompressError("a Hugging Face model is already trained: `pretrain` does not apply to `hf:`",
                                where="model.pretrain", fix="remove `pretrain:` from the model section")
    if spec.hf is not None and task.kind not in ("causal_lm", "embedding"):
        raise EdgeCompressError(f"a Hugging Face transformer takes token ids, but data {task.name!r} is {task.kind} "
                                "data", where="data", fix="use text data: data: {dataset: text, task: causal_lm} "
                                                          "(or task: embedding for an encoder)")
    if spec.zoo is not None and task.kind in ("causal_lm", "embedding"):
        raise EdgeCompressError(f"zoo models take images, but data {task.name!r} is {task.kind} text (token ids)",
                                where="model.zoo", fix="name a language model: model: {hf: smollm2-135m}, "
                                                       "{hf: all-minilm-l6-v2} or {hf: path/to/hf_model_dir}")
    if getattr(task, "num_classes", None) is None and spec.zoo is not None:
        raise EdgeCompressError(f"data {task.name!r} has no labels, so the zoo model's number of outputs is unknown",
                                where="data.num_classes", fix="set data.num_classes to the model's output count")
    if not task.has_labels and spec.pretrain is not None and spec.weights is None:
        raise EdgeCompressError(f"cannot pretrain on data {task.name!r}: it has no labels", where="model.pretrain",
                                fix="give the model's trained weights (model.weights), or use labelled data")
    model = load_from_spec(spec, task.input_shape, getattr(task, "num_classes", None), trust_pickle=trust_pickle)
    if not train or spec.pretrain is None or spec.weights is not None:
        return model
    from edgecompress.train import train as run_training

    check_model_and_task(model, task)
    folder = cache_dir() / f"baseline-{_cache_key(recipe, model, device)}"
    cached = _load_cached(folder, spec, task) if spec.pretrain.cache else None
    if cached is not None:
        return cached
    p = spec.pretrain
    run_training(placement.move(model, device), task, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size,
                 seed=recipe.seed, progress=progress, description="baseline training")
    placement.move(model, placement.CPU).eval()
    if spec.pretrain.cache and distributed.is_main():  # under torchrun every rank holds the same model
        _store(model, folder)
    return model


def _load_cached(folder: Path, spec: ModelSection, task: Task) -> nn.Module | None:
    """The baseline cached in ``folder``; None when there is none, or when it is damaged (it is then retrained)."""
    if not folder.exists():
        return None
    try:
        model = load_model(folder, lambda arch: load_from_spec(spec, task.input_shape, task.num_classes))
        check_model_and_task(model, task)
    except EdgeCompressError as err:
        console.print(f"[yellow]warning:[/] the cached baseline {folder} is damaged ({err.what}); training it again "
                      "to replace that folder", highlight=False, soft_wrap=True)
        return None
    console.print(f"using cached baseline {folder}", highlight=False, soft_wrap=True)
    return model


def _store(model: nn.Module, folder: Path) -> None:
    """Save ``model`` as the cached baseline ``folder``, replacing what is there (e.g. a damaged copy)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent))
    save_model(model, tmp)
    try:
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EdgeCompressError(f"cannot replace the cached baseline ({err})", where=str(folder),
                                fix=f"delete the folder {folder} and run again") from err


