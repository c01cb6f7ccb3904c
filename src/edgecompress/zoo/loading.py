"""Load the model to compress from a :class:`ModelSpec` (the ``model:`` section of a recipe).

Sources, exactly one per spec: a zoo name, a ``package.module:function``, a ``torch.export`` archive (.pt2),
a pickled model, or a Hugging Face transformer (``hf``: a model directory, or a packaged language model such as
``smollm2-135m``; see :mod:`edgecompress.llm.models`). Zoo and callable architectures can take a state_dict (``weights``). Everything loads
without running code from the file except ``pickle``, which needs ``trust_pickle=True`` (``--trust-pickle``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle as pickle_module
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.zoo.registry import MODELS, build, unknown_name_error

_SOURCES = ("zoo", "callable", "archive", "pickle", "hf")
_MAX_LISTED = 5  # keys/names shown per problem in error messages


class ModelSpec(BaseModel):
    """Where the model comes from: exactly one of zoo, callable, archive, pickle, hf (+ weights for zoo/callable)."""

    model_config = ConfigDict(extra="forbid")
    zoo: str | None = Field(None, description="a zoo architecture name (see edgecompress.zoo.names())")
    callable: str | None = Field(None, description=(
        "'package.module:function' returning an nn.Module; it gets input_shape / num_classes if its signature "
        "names them, plus kwargs (modules in the current directory are importable)"))
    kwargs: dict[str, Any] = Field(default_factory=dict,
                                   description="keyword arguments for the zoo builder or callable")
    weights: Path | None = Field(None, description=(
        "a state_dict for the zoo/callable architecture: .safetensors, or .pt/.pth/.bin loaded with weights_only=True"))
    archive: Path | None = Field(None, description="a torch.export archive (.pt2) holding the whole model")
    pickle: Path | None = Field(None, description=(
        "a whole pickled model (torch.save(model)); unpickling runs code from the file, so it needs --trust-pickle"))
    hf: str | None = Field(None, description=(
        "a Hugging Face transformer: a model directory (config.json, weights and tokenizer, as save_pretrained "
        "writes them; never written to) or a packaged language model: smollm2-135m, all-minilm-l6-v2"))

    @model_validator(mode="after")
    def _check_sources(self) -> ModelSpec:
        sources = [name for name in _SOURCES if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ValueError(f"give exactly one of {', '.join(_SOURCES)}; got {' and '.join(sources) or 'none'}")
        if self.source not in ("zoo", "callable") and (self.weights is not None or self.kwargs):
            raise ValueError(f"`weights` and `kwargs` need an architecture from `zoo` or `callable`; "
                             f"`{self.source}` already holds the whole model")
        if self.zoo is not None and self.zoo not in MODELS:
            err = unknown_name_error(self.zoo)
            raise ValueError(f"{err.what}; {err.fix}")
        if self.hf is not None and not self.hf.strip():
            raise ValueError("hf is empty: give a Hugging Face model directory or smollm2-135m / all-minilm-l6-v2")
        if self.callable is not None and not re.fullmatch(r"[\w.]+:[\w.]+", self.callable):
            raise ValueError(f"callable must look like 'package.module:function', got {self.callable!r}")
        return self

    @property
    def source(self) -> str:
        """Which of zoo / callable / archive / pickle this spec uses."""
        return next(name for name in _SOURCES if getattr(self, name) is not None)


def load_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int,
               trust_pickle: bool = False) -> nn.Module:
    """The model ``spec`` describes, for data of ``input_shape`` (per sample) and ``num_classes`` classes."""
    model = _LOADERS[spec.source](spec, tuple(input_shape), num_classes, trust_pickle)
    if spec.weights is not None:
        load_weights(model, spec.weights)
    return model


def _from_zoo(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, trust_pickle: bool) -> nn.Module:
    return build(spec.zoo, input_shape, num_classes, **spec.kwargs)


def _from_callable(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, trust_pickle: bool) -> nn.Module:
    fn = import_callable(spec.callable)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins and C extensions have no signature
        params = {}
    given = {k: v for k, v in (("input_shape", input_shape), ("num_classes", num_classes)) if k in params}
    try:
        model = fn(**given, **spec.kwargs)
    except Exception as err:
        raise EdgeCompressError(
            f"calling {spec.callable} failed ({type(err).__name__}: {err})", where="model.callable",
            fix=f"check model.kwargs against its parameters {inspect.signature(fn) if params else ''}".rstrip(),
        ) from err
    if not isinstance(model, nn.Module):
        raise EdgeCompressError(f"{spec.callable} returned {type(model).__name__}, not a torch.nn.Module",
                                where="model.callable", fix="point it at a function or class that builds the model")
    return model


def import_callable(target: str) -> Callable[..., Any]:
    """The object named by ``package.module:attr`` (the current directory is importable too)."""
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise EdgeCompressError(f"module {module_name!r} not found", where="model.callable", fix=(
                "check the spelling; the module must be installed or be a .py file in the current directory")) from None
        raise EdgeCompressError(f"importing {module_name!r} failed: {err}", where="model.callable",
                                fix=f"install the missing package {err.name!r}") from err
    except Exception as err:
        raise EdgeCompressError(f"importing {module_name!r} failed ({type(err).__name__}: {err})",
                                where="model.callable", fix="fix the error in that module") from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n, v in vars(module).items()
                      if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module_name][:10]
            raise EdgeCompressError(f"{module_name!r} has no attribute {attr!r}", where="model.callable",
                                    fix=f"use one of: {', '.join(public) or '(no public callables)'}")
        obj = getattr(obj, part)
    return obj


def _existing(path: Path, key: str) -> Path:
    if not path.is_file():
        raise EdgeCompressError("file not found", where=f"{key}: {path}", fix="check the path")
    return path


def _from_archive(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, trust_pickle: bool) -> nn.Module:
    path = _existing(spec.archive, "model.archive")
    try:
        return torch.export.load(path).module()
    except Exception as err:
        raise EdgeCompressError(f"cannot load the torch.export archive ({type(err).__name__}: {err})",
                                where=str(path), fix="save one with torch.export.save(torch.export.export(model, "
                                                     "(example_input,)), 'model.pt2')") from err


def _from_pickle(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, trust_pickle: bool) -> nn.Module:
    path = _existing(spec.pickle, "model.pickle")
    if not trust_pickle:
        raise EdgeCompressError(
            "loading a pickled model runs Python code stored in the file, so it is refused by default", where=str(path),
            fix="pass --trust-pickle (trust_pickle=True) only for a file from a source you trust; safer: save "
                "model.state_dict() as .safetensors and use zoo/callable + weights, or save a torch.export archive")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise EdgeCompressError(f"cannot unpickle the model ({type(err).__name__}: {err})", where=str(path),
                                fix="the model's classes must be importable under the module names they were saved "
                                    "from; or save a torch.export archive instead") from err
    if not isinstance(model, nn.Module):
        raise EdgeCompressError(f"the file holds a {type(model).__name__}, not a torch.nn.Module", where=str(path),
                                fix="a state_dict belongs in `weights:` together with `zoo:` or `callable:`")
    return model


def _from_hf(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, trust_pickle: bool) -> nn.Module:
    from edgecompress.llm.models import load

    return load(spec.hf)[0]  # read only: the directory is checked (config.json, tokenizer) and never written to


_LOADERS = {"zoo": _from_zoo, "callable": _from_callable, "archive": _from_archive, "pickle": _from_pickle,
            "hf": _from_hf}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or a .pt/.pth/.bin state_dict loaded with ``weights_only=True``."""
    _existing(path, "model.weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle_module.UnpicklingError as err:
        raise EdgeCompressError(
            f"the file holds Python objects that safe loading (weights_only=True) refuses: {str(err).splitlines()[0]}",
            where=str(path), fix="save model.state_dict() rather than the model; or, if you trust the file, load it "
                                 "as `pickle:` with --trust-pickle") from None
    except Exception as err:
        raise EdgeCompressError(f"cannot read the weights ({type(err).__name__}: {err})", where=str(path)) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # e.g. Lightning checkpoints
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise EdgeCompressError("not a state_dict (a dict of tensors)", where=str(path),
                                fix="save it with torch.save(model.state_dict(), path) or safetensors.torch.save_file")
    return state


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state_dict into ``model`` with strict key and shape checks; mismatches are listed in the error."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs model {list(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{label}: {_listed(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
    if problems:
        hint = ("; the keys start with 'module.' (saved from DataParallel): save model.module.state_dict()"
                if unexpected and all(k.startswith("module.") for k in unexpected) else "")
        raise EdgeCompressError("the weights do not fit the architecture: " + "; ".join(problems), where=str(path),
                                fix="use the architecture and options (e.g. width, num_classes) the weights were "
                                    "saved from" + hint)
    model.load_state_dict(state, strict=True)


def check_input(model: nn.Module, input_shape: tuple[int, ...], num_classes: int | None = None) -> None:
    """Run ``model`` on zeros of ``[2, *input_shape]`` (eval mode, no grad; modes are restored afterwards).

    Raises an EdgeCompressError when the model rejects inputs of that shape, or (with ``num_classes``) when
    its output is not ``[2, num_classes]``.
    """
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
    except NotImplementedError:  # torch.export modules keep the mode they were exported in
        pass
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as err:
        raise EdgeCompressError(
            f"the model does not accept inputs of shape {tuple(input_shape)} (tried a batch of 2: "
            f"{(2, *input_shape)}){_expected_input(model)}: {type(err).__name__}: {str(err)[:500]}", where="model",
            fix="use a model built for this input shape (channels, size), or data of the shape the model expects; "
                "a torch.export archive also needs a dynamic batch dimension") from err
    finally:
        for module, training in modes.items():
            module.training = training
    if num_classes is not None and (not torch.is_tensor(out) or tuple(out.shape) != (2, num_classes)):
        got = list(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise EdgeCompressError(f"the model outputs {got} for a batch of 2, but the dataset has {num_classes} classes "
                                f"(expected [2, {num_classes}])", where="model",
                                fix=f"build the model with {num_classes} outputs (logits)")


def _expected_input(model: nn.Module) -> str:
    """'; it expects (batch, 1, 28, 28)' for a traced model (a torch.export archive) that recorded the shape of its
    first input, else ''."""
    graph = getattr(model, "graph", None)
    first = next((n for n in graph.nodes if n.op == "placeholder"), None) if graph is not None else None
    value = first.meta.get("val") if first is not None else None
    if not torch.is_tensor(value):
        return ""
    dims = [str(d) if isinstance(d, int) else "batch" if i == 0 else "?" for i, d in enumerate(value.shape)]
    return f"; it expects ({', '.join(dims)})"
