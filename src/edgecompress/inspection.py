"""What `edgecompress inspect` and `edgecompress bench` need: load a model or artifact from a command-line
argument, and describe a model layer by layer (including which layers can be pruned structurally)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgecompress import zoo
from edgecompress.errors import EdgeCompressError
from edgecompress.export import Artifact
from edgecompress.export.executorch import pte_info
from edgecompress.export.onnx import load_onnx
from edgecompress.export.runtimes import load_pt2
from edgecompress.measure import count_macs, count_params, layer_table
from edgecompress.prune.analysis import prunability
from edgecompress.zoo.loading import ModelSpec, check_input, load_model


def load_for_inspect(arg: str, input_shape: tuple[int, ...], classes: int, arch: str | None,
                     trust_pickle: bool) -> tuple[nn.Module, tuple[int, ...]]:
    """A model from a zoo name, a recipe file, ``package.module:callable``, a .pt2 archive, a weights file
    (with ``arch``) or a pickled model (with ``trust_pickle``)."""
    path = Path(arg)
    if path.suffix in (".yaml", ".yml"):
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
        spec = ModelSpec(pickle=path)
    elif ":" in arg:
        spec = ModelSpec(callable=arg)
    else:
        spec = ModelSpec(zoo=arg)
    model = load_model(spec, input_shape, classes, trust_pickle=trust_pickle)
    check_input(model, input_shape)
    return model, input_shape


def inspect_model(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    example = torch.zeros(1, *input_shape)
    prunable = prunability(model, example)
    layers = [row for row in layer_table(model, example) if row["name"] in prunable]
    for row in layers:
        row["prunable"] = prunable[row["name"]]
    return {"params": count_params(model), "macs": count_macs(model, example), "layers": layers}


def artifact_from_file(path: Path, input_shape: tuple[int, ...] | None) -> tuple[Artifact, tuple[int, ...]]:
    """Wrap an exported file as an Artifact and find its per-sample input shape. The file is validated first (the
    ONNX checker; a trial load of a .pt2, and of a .pte in a child process), so a damaged one raises an
    EdgeCompressError instead of failing, or aborting the process, in its runtime."""
    if not path.is_file():
        raise EdgeCompressError("artifact not found: no such file or directory", where=str(path), fix=_BENCH_TAKES)
    if path.suffix not in _READERS:
        raise EdgeCompressError(f"unknown artifact type {path.suffix!r}", where=str(path), fix=_BENCH_TAKES)
    if path.stat().st_size == 0:
        raise EdgeCompressError("the file is empty (0 bytes)", where=str(path), fix="export the model again")
    art, shape = _READERS[path.suffix](path)
    shape = input_shape or shape
    if not shape or not all(shape):
        raise EdgeCompressError("cannot tell the input shape from the file", where=str(path),
                                fix="pass --input-shape, e.g. --input-shape 1,28,28")
    return art, tuple(shape)


def _onnx_file(path: Path) -> tuple[Artifact, tuple[int, ...]]:
    proto = load_onnx(path)
    data = path.with_name(path.name + ".data")
    art = Artifact(path, "onnx", "onnxruntime", "int8" if _is_quantized(proto) else "fp32",
                   [data] if data.exists() else [])
    return art, tuple(d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:])


def _pt2_file(path: Path) -> tuple[Artifact, tuple[int, ...]]:
    load_pt2(path)  # a trial load: a damaged archive fails here, not in the benchmark
    return Artifact(path, "pytorch", "torch"), ()


_BENCH_TAKES = ("bench takes an exported .onnx (ONNX Runtime), .pte (ExecuTorch) or .pt2 (torch.export) file, or the "
                "directory of a finished `edgecompress run`")
_READERS = {".onnx": _onnx_file, ".pt2": _pt2_file, ".pte": pte_info}  # suffix -> checked artifact, input shape


def _is_quantized(proto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "QLinearConv", "MatMulInteger", "ConvInteger") for n in proto.graph.node)
