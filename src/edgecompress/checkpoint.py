"""Safe checkpoints for models whose layers were resized by pruning.

A checkpoint is ``model.safetensors`` (tensors only) plus ``model.json`` (each module's scalar attributes,
such as ``out_channels``, and how to rebuild the architecture). Loading rebuilds the original architecture,
re-applies the recorded attributes and assigns the saved tensors, so a physically pruned model comes back
without unpickling anything. torch-pruning's own ``tp.state_dict`` pickles ``module.__dict__``, which cannot
be loaded with ``weights_only=True``; that is why this is written here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from collections.abc import Callable

from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edgecompress import atomic
from edgecompress.errors import EdgeCompressError
from edgecompress.nn import rebuild

ARCH_ATTR = "_edgecompress_arch"  # set by zoo.build / model loading: how to rebuild the architecture
_SCALARS = (int, float, bool, str)


def _scalar_attrs(module: nn.Module) -> dict[str, Any]:
    attrs = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        if isinstance(value, _SCALARS) or (
            isinstance(value, (tuple, list)) and all(isinstance(v, _SCALARS) for v in value)
        ):
            attrs[key] = list(value) if isinstance(value, tuple) else value
    return attrs


def save_model(model: nn.Module, directory: Path) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into ``directory`` atomically; return the json path."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = directory / "model.safetensors.tmp"
    save_file(state, str(tmp))
    atomic.replace(tmp, directory / "model.safetensors")
    arch = getattr(model, ARCH_ATTR, None)
    if arch is None and type(model).__module__.startswith("transformers.") and hasattr(model, "config"):
        arch = {"hf": type(model).__name__}  # a transformers model passed from Python
    if isinstance(arch, dict) and "hf" in arch:  # a transformers model: its config as it is now (pruning shrinks it)
        arch = {"hf": arch["hf"], "config": json.loads(model.config.to_json_string(use_diff=False))}
    meta = {
        "arch": arch,
        "modules": {name: _scalar_attrs(m) for name, m in model.named_modules()},
        "tuples": {name: [k for k, v in vars(m).items() if isinstance(v, tuple)] for name, m in model.named_modules()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "rebuilt": rebuild.specs(model),  # modules stages put in (factorized layers, exit heads)
    }
    path = directory / "model.json"
    atomic.write_text(path, json.dumps(meta))
    return path


def _check_meta(meta: Any, directory: Path) -> None:
    expected = {"modules": dict, "tuples": dict, "requires_grad": dict}
    bad = [k for k, kind in expected.items() if not isinstance(meta, dict) or not isinstance(meta.get(k), kind)]
    if bad:
        raise EdgeCompressError(f"damaged model.json: missing or malformed {', '.join(bad)}",
                                where=str(directory / "model.json"),
                                fix="restore the file, or start a new run (--force replaces the run directory)")


def _expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a layer's recorded sizes imply (convolutions, linear layers, norms)."""
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return {"weight": (module.out_channels, module.in_channels // module.groups, *module.kernel_size),
                "bias": (module.out_channels,)}
    if isinstance(module, nn.Linear):
        return {"weight": (module.out_features, module.in_features), "bias": (module.out_features,)}
    if isinstance(module, nn.modules.batchnorm._NormBase):
        n = (module.num_features,)
        return {"weight": n, "bias": n, "running_mean": n, "running_var": n}
    return {}


def _check_shapes(name: str, module: nn.Module, weights_path: Path) -> None:
    for leaf, shape in _expected_shapes(module).items():
        tensor = getattr(module, leaf, None)
        if tensor is not None and tuple(tensor.shape) != shape:
            raise EdgeCompressError(
                f"tensor {name}.{leaf} has shape {tuple(tensor.shape)} but the layer's recorded sizes need {shape}",
                where=str(weights_path), fix="restore the file, or start a new run (--force replaces the run directory)")


def load_model(directory: Path, build: Callable[[dict | None], nn.Module]) -> nn.Module:
    """Rebuild a model saved by :func:`save_model`. ``build(arch)`` returns a fresh model of the original
    architecture (``arch`` is the saved descriptor, or None when the model had none)."""
    meta_path, weights_path = directory / "model.json", directory / "model.safetensors"
    try:
        meta = json.loads(meta_path.read_text())
        state = load_file(str(weights_path))
    except (OSError, json.JSONDecodeError, SafetensorError) as err:
        raise EdgeCompressError(
            f"checkpoint is missing or corrupt ({err})", where=str(directory),
            fix="rerun without --resume (use --force to replace the run directory)",
        ) from err
    _check_meta(meta, directory)
    model = build(meta.get("arch"))
    rebuild.restore(model, meta.get("rebuilt") or {}, str(meta_path))
    modules = dict(model.named_modules())
    for name, attrs in meta["modules"].items():
        if name not in modules:
            raise EdgeCompressError(
                f"checkpoint has module {name!r} that the rebuilt architecture lacks", where=str(directory),
                fix="resume with the same model and recipe that created the run",
            )
        tuples = set(meta["tuples"].get(name, []))
        for key, value in attrs.items():
            setattr(modules[name], key, tuple(value) if key in tuples else value)
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise EdgeCompressError(f"checkpoint lacks tensors {', '.join(missing[:5])}", where=str(weights_path),
                                fix="restore the file, or start a new run (--force replaces the run directory)")
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        if module is not None and leaf in module._parameters:
            grad = meta["requires_grad"].get(key, True)
            module._parameters[leaf] = nn.Parameter(tensor, requires_grad=grad)
        elif module is not None and leaf in module._buffers:
            module._buffers[leaf] = tensor
        else:
            raise EdgeCompressError(f"checkpoint tensor {key!r} has no place in the model", where=str(directory))
    for name, module in modules.items():
        _check_shapes(name, module, weights_path)
    if callable(getattr(model, "tie_weights", None)):  # transformers: re-share tied weights (e.g. lm_head = embeddings)
        model.tie_weights()
    if ARCH_ATTR in vars(model) or meta.get("arch") is not None:
        setattr(model, ARCH_ATTR, meta.get("arch"))
    return model.eval()


