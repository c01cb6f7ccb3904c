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
    weights file (with ``arch``), a pickled model (with ``trust_pickle``), or a Hugging Face transformer (a packaged
    language model's name or a model directory; its input shape is ``()``: token ids)."""
    from edgecompress import packaged

    path = Path(arg)
    if is_transformer_source(arg) and arg not in zoo.names():
        from edgecompress.llm.models import load

        return load(arg)[0], ()
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


def is_transformer_source(arg: str) -> bool:
    """Whether ``arg`` names a packaged language model or a Hugging Face model directory."""
    from edgecompress.llm.models import PRETRAINED

    return arg in PRETRAINED or (Path(arg) / "config.json").is_file()


def is_transformer(model: nn.Module) -> bool:
    """Whether ``model`` was loaded as a Hugging Face transformer (``model: {hf: ...}``)."""
    from edgecompress.checkpoint import ARCH_ATTR

    arch = getattr(model, ARCH_ATTR, None)
    return isinstance(arch, dict) and "hf" in arch


def inspect_transformer(model: nn.Module) -> dict:
    """A transformer's projections grouped by role and shape (with the layers that have them) and the units
    ``prune.composite`` can remove from each layer: MLP neurons, and for decoders key-value groups."""
    from edgecompress.llm.arch import transformer

    arch = transformer(model)
    groups: dict[tuple, list[int]] = {}
    for i in range(len(arch)):
        for role, proj in arch.projections(i).items():
            groups.setdefault((role, arch.family.roles[role], proj.in_features, proj.out_features), []).append(i)
    rows = [{"role": role, "module": f"{arch.prefix}.N.{name}", "in_features": n_in, "out_features": n_out,
             "params_per_layer": n_in * n_out, "layers": layers} for (role, name, n_in, n_out), layers in groups.items()]
    removable = []
    for i in range(len(arch)):
        proj = arch.projections(i)
        unit = {"layer": i, "mlp_neurons": proj["down"].in_features}
        if arch.family.kind == "decoder":
            attn = arch.layers[i].self_attn
            unit.update(kv_groups=proj["k"].out_features // attn.head_dim, heads_per_group=attn.num_key_value_groups,
                        head_dim=attn.head_dim)
        removable.append(unit)
    return {"class": type(model).__name__, "family": arch.family.name, "kind": arch.family.kind,
            "layers": len(arch), "prefix": arch.prefix, "params": count_params(model), "projections": rows,
            "removable": removable}


def layer_ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start = [], None
    for i, n in enumerate(layers):
        if start is None:
            start = n
        if i + 1 == len(layers) or layers[i + 1] != n + 1:
            out.append(f"{start}" if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


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
        tokens = "vocab_size" in art.details
        raise EdgeCompressError("cannot tell the input shape from the file" + (
            " (its inputs are token ids of any length)" if tokens else ""), where=str(path),
            fix="pass --input-shape with the sequence length in tokens, e.g. --input-shape 128" if tokens else
                "pass --input-shape, e.g. --input-shape 1,28,28")
    return art, tuple(shape)


def _bench_takes() -> str:
    """'bench takes an exported .onnx (ONNX Runtime), ... or .pt2 (torch.export) file, or ...', from the registry."""
    kinds = [f"{suffix} ({r.label})" for r in all_runtimes() for suffix in r.suffixes]
    listed = " or ".join(filter(None, [", ".join(kinds[:-1]), kinds[-1]]))
    return f"bench takes an exported {listed} file, or the directory of a finished `edgecompress run`"
