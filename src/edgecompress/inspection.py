"""What `edgecompress inspect` and `edgecompress bench` need: load a model or artifact from a command-line
argument, and describe a model layer by layer (including which layers can be pruned structurally)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgecompress import zoo
from edgecompress.errors import EdgeCompressError
from edgecompress.measure import count_macs, count_params, layer_table
from edgecompress.prune.analysis import prunability
from edgecompress.runtimes import Artifact, all_runtimes, for_suffix
from edgecompress.zoo.loading import ModelSpec, check_input, load_model, read_state_dict


def load_for_inspect(arg: str, input_shape: tuple[int, ...], classes: int, arch: str | None,
                     trust_pickle: bool) -> tuple[nn.Module, tuple[int, ...]]:
    """A model from a zoo name, a recipe (file or packaged name), ``package.module:callable``, a .pt2 archive, a
    weights file (with ``arch``) or a pickled model (with ``trust_pickle``)."""
    from edgecompress import packaged

    path = Path(arg)
    if path.suffix in (".yaml", ".yml") or (arg not in zoo.names() and arg in packaged.names()):
        from edgecompress import baseline
        from edgecompress.data.datasets import load_task
        from edgecompress.recipe import load_recipe

        recipe = load_recipe(path)
        task = load_task(recipe.data)
        return baseline.load(recipe, task, trust_pickle=trust_pickle, train=False), task.input_shape
    arch_key = {"zoo": arch} if arch in zoo.names() else {"callable": arch} if arch else {}
    if path.suffix == ".pt2":
        spec = ModelSpec(archive=path)
    elif path.suffix in (".safetensors", ".pt", ".pth", ".bin") and arch:
        spec = ModelSpec(weights=path, **arch_key)
    elif path.suffix in (".pt", ".pth", ".pkl"):
        _refuse_state_dict(path)
        spec = ModelSpec(pickle=path)
    elif ":" in arg:
        spec = ModelSpec(callable=arg)
    else:
        spec = ModelSpec(zoo=arg)
    model = load_model(spec, input_shape, classes, trust_pickle=trust_pickle)
    check_input(model, input_shape)
    return model, input_shape


def _refuse_state_dict(path: Path) -> None:
    """A weights file given without ``--arch`` is told to pass it (it is not a pickled model)."""
    try:
        read_state_dict(path)
    except EdgeCompressError:
        return  # not a state_dict: a pickled model (or a missing or damaged file), which the pickle loader names
    raise EdgeCompressError("the file holds only weights (a state_dict), not the model's architecture",
                            where=str(path), fix="pass --arch with a zoo name (e.g. --arch resnet20) or "
                                                 "package.module:callable that builds the model")


def inspect_model(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    example = torch.zeros(1, *input_shape)
    prunable = prunability(model, example)
    layers = [row for row in layer_table(model, example) if row["name"] in prunable]
    for row in layers:
        row["prunable"] = prunable[row["name"]]
    return {"params": count_params(model), "macs": count_macs(model, example), "layers": layers}


def artifact_from_file(path: Path, input_shape: tuple[int, ...] | None) -> tuple[Artifact, tuple[int, ...]]:
    """Wrap an exported file as an Artifact of the runtime registered for its suffix and find its per-sample input
    shape. The runtime validates the file first (the ONNX checker; a trial load of a .pt2, and of a .pte in a child
    process), so a damaged one raises an EdgeCompressError instead of failing, or aborting the process, later."""
    if not path.is_file():
        raise EdgeCompressError("artifact not found: no such file or directory", where=str(path), fix=_bench_takes())
    runtime = for_suffix(path.suffix)
    if runtime is None:
        raise EdgeCompressError(f"unknown artifact type {path.suffix!r}", where=str(path), fix=_bench_takes())
    if path.stat().st_size == 0:
        raise EdgeCompressError("the file is empty (0 bytes)", where=str(path), fix="export the model again")
    art, shape = runtime.validate(path)
    shape = input_shape or shape
    if not shape or not all(shape):
        raise EdgeCompressError("cannot tell the input shape from the file", where=str(path),
                                fix="pass --input-shape, e.g. --input-shape 1,28,28")
    return art, tuple(shape)


def _bench_takes() -> str:
    """'bench takes an exported .onnx (ONNX Runtime), ... or .pt2 (torch.export) file, or ...', from the registry."""
    kinds = [f"{suffix} ({r.label})" for r in all_runtimes() for suffix in r.suffixes]
    listed = " or ".join(filter(None, [", ".join(kinds[:-1]), kinds[-1]]))
    return f"bench takes an exported {listed} file, or the directory of a finished `edgecompress run`"
