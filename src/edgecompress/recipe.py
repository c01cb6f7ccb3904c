"""Recipes: model, data, ordered stages, targets and export settings, validated up front.

Errors name the file, the line, the key path (``stages[1].ratio``), the bad value and what is allowed; every
error of the recipe is reported at once. Each stage's fields are validated against the config class its
method registered. Recipe files are untrusted input: the loader bounds their size, nesting and alias
expansion, and accepts plain YAML values only.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator,
                      model_validator)

from edgecompress import packaged, registry
from edgecompress.data.options import DATA_OPTIONS, DataSpec, Mnist5kData, TextData
from edgecompress.errors import EdgeCompressError
from edgecompress.registry import StageConfig
from edgecompress.search import space
from edgecompress.safeyaml import Path_, load_yaml, read_text, shown
from edgecompress.settings import ExportSettings
from edgecompress.zoo.loading import ModelSpec

Error = tuple[Path_, str]  # key path, message

_MAX_SHOWN = 20  # errors listed in one message


def _check_slug(value: str) -> str:
    """``value`` if it is safe as (part of) a folder name."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value) or ".." in value:
        raise ValueError(f"{shown(value)} is not a safe name: it names a folder, so use 1 to 64 letters, digits, '.', "
                         "'_' or '-', starting with a letter or digit, without '..'")
    return value


Slug = Annotated[str, AfterValidator(_check_slug)]
_SLUG = TypeAdapter(Slug)

DEVICES = "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N (the GPU with index N)"


def check_device(value: str) -> str:
    """``value`` if it names a device a run can use (see ``DEVICES``); whether that GPU exists is checked later."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", value):
        raise ValueError(f"{shown(value)} is not a device: use {DEVICES}")
    return value


Device = Annotated[str, AfterValidator(check_device)]
Threads = Annotated[int, Field(ge=1, le=256)]
_THREADS = TypeAdapter(Threads)


class PretrainSpec(BaseModel):
    """Train the model before compressing it (when it has no weights); the result is cached on disk."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(5, ge=1, le=1000, description="training epochs")
    lr: float = Field(0.05, gt=0, le=10, description="learning rate (SGD, cosine schedule)")
    batch_size: int = Field(64, ge=1, description="batch size")
    cache: bool = Field(True, description="reuse a cached trained baseline for the same model/data/seed")


class ModelSection(ModelSpec):
    pretrain: PretrainSpec | None = Field(None, description="train before compressing (models without weights)")


class Targets(BaseModel):
    """What the run must achieve; checked on the final artifact against the baseline."""

    model_config = ConfigDict(extra="forbid")
    max_accuracy_drop: float | None = Field(1.0, ge=0, description=(
        "max drop of the task's headline metric in percentage points (accuracy; on unlabeled data, top-1 "
        "agreement with the original model; embedding data: cosine to the original model's vectors x 100); not "
        "judged where lower is better (perplexity: use max_perplexity_increase_pct)"))
    max_perplexity_increase_pct: float | None = Field(None, ge=0, description=(
        "causal-LM data: max rise of the final artifact's perplexity over the baseline's, in percent "
        "(100 * (final / baseline - 1))"))
    min_size_reduction: float | None = Field(None, gt=0, description="min (baseline bytes / final bytes)")
    min_macs_reduction: float | None = Field(None, gt=0, description="min (baseline MACs / final MACs)")
    max_latency_ms: float | None = Field(None, gt=0, description="max p50 latency of the final artifact")


class StageEntry(BaseModel):
    """One step of the recipe: a registered method plus its validated config."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    method: str
    name: Slug
    config: StageConfig

    def to_yaml_dict(self) -> dict[str, Any]:
        extra = {"name": self.name} if self.name != self.method else {}
        return {"method": self.method, **extra, **self.config.model_dump(mode="json")}


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    name: Slug = Field("recipe", description="shown in reports and default run directory names")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the run; stage i uses seed + i")
    device: Device = Field("cpu", description=f"where the compression work runs: {DEVICES}. Stages without GPU "
                                              "support run on the CPU; artifacts are always measured on the CPU")
    threads: Threads | None = Field(None, description=(
        "CPU threads torch uses for the compression work (training, calibration, solves); default: half the CPUs "
        "the process may use, at least 1. The latency of artifacts is measured with export.threads"))
    model: ModelSection | None = Field(None, description="the model (omit when passing one from Python)")
    data: DataSpec = Field(default_factory=Mnist5kData, description="dataset and splits")
    stages: list[StageEntry] = Field(default_factory=list, description="ordered compression stages")
    targets: Targets = Field(default_factory=Targets)
    target: str | None = Field(None, description=(
        "an edge target the final artifact must fit (cpu, npu-int8, mcu or a target profile YAML file): the report "
        "checks its operators, data types, weights against flash and peak activations against SRAM"))
    export: ExportSettings = Field(default_factory=ExportSettings)
    search: dict[str, space.StageSpace] | None = Field(None, description=(
        "what `edgecompress tune` varies: stage name -> field -> range or choices (`optional: true`: the stage "
        "may be left out); `edgecompress run` ignores it"))

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str | None) -> str | None:
        from edgecompress.target.profiles import load_target

        if value is not None:
            try:
                load_target(value)
            except EdgeCompressError as err:
                raise ValueError(f"{err.what}; {err.fix}") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _stages_from_dicts(cls, data: Any) -> Any:
        if isinstance(data, dict) and "stages" in data:
            stages, errors = _parse_stages(data["stages"])
            if errors:
                raise ValueError("; ".join(f"{_format_path(path)}: {msg}" for path, msg in errors))
            data = {**data, "stages": stages}
        return data

    @model_validator(mode="after")
    def _tokenizer_follows_model(self) -> Recipe:
        """Text data without a ``tokenizer`` uses the tokenizer of the recipe's Hugging Face model (``model.hf``)."""
        if self.model is not None and self.model.hf is not None and isinstance(self.data, TextData) \
                and "tokenizer" not in self.data.model_fields_set:
            self.data = self.data.model_copy(update={"tokenizer": self.model.hf})
            self.data.model_fields_set.add("tokenizer")
        return self

    def to_yaml(self) -> str:
        """The resolved recipe; loading it gives back the same recipe and the same fingerprint."""
        return yaml.safe_dump(self._resolved(), sort_keys=False)

    def _resolved(self) -> dict[str, Any]:
        data = _without_default_nones(self, self.model_dump(mode="json", exclude={"stages"}))
        data["stages"] = [s.to_yaml_dict() for s in self.stages]
        return data

    def fingerprint(self) -> str:
        """What a resumed run must match. ``device`` and ``threads`` are left out: a run may resume on another
        device or with other threads (each stage's report says where it ran)."""
        data = self._resolved()
        del data["device"]
        data.pop("threads", None)
        return hashlib.sha256(yaml.safe_dump(data, sort_keys=False).encode()).hexdigest()[:16]

    def with_device(self, device: str) -> Recipe:
        """This recipe with its ``device`` replaced (the ``--device`` option of ``edgecompress run``)."""
        try:
            return self.model_copy(update={"device": check_device(device)})
        except ValueError:
            raise EdgeCompressError(f"{shown(device)} is not a device", where="--device",
                                    fix=f"use {DEVICES}") from None

    def with_threads(self, threads: int) -> Recipe:
        """This recipe with its ``threads`` replaced (``edgecompress run --threads``, ``compress(threads=)``)."""
        try:
            return self.model_copy(update={"threads": _THREADS.validate_python(threads)})
        except ValidationError:
            raise EdgeCompressError(f"{shown(threads)} is not a thread count", where="threads",
                                    fix="use a whole number from 1 to 256") from None


def _without_default_nones(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    """``dumped`` (the JSON dump of ``model``) without the None values whose field defaults to None.

    A None that overrides a default (``max_accuracy_drop: null``) stays, so the YAML loads back to the same recipe.
    """
    out = {}
    for key, value in dumped.items():
        if value is None and type(model).model_fields[key].default is None:
            continue
        child = getattr(model, key)
        out[key] = _without_default_nones(child, value) if isinstance(child, BaseModel) else value
    return out


# ---- stages ------------------------------------------------------------------------------------------------


def _parse_stages(raw: Any) -> tuple[Any, list[Error]]:
    """Stage entries (None where a stage is invalid) and the errors of every stage; a non-list is left to pydantic."""
    if not isinstance(raw, list):
        return raw, []
    parsed = [_parse_stage(i, item) for i, item in enumerate(raw)]
    entries = [entry for entry, _ in parsed]
    errors = [error for _, stage_errors in parsed for error in stage_errors]
    errors += [(("stages", i), f"{entry.method!r} produces the deployable artifact, so it must be the last stage")
               for i, entry in enumerate(entries[:-1]) if entry and registry.get(entry.method).produces_artifact]
    return entries, errors


def _parse_stage(index: int, raw: Any) -> tuple[StageEntry | None, list[Error]]:
    """One stage, or None and its errors (name, method and fields are checked independently)."""
    if isinstance(raw, StageEntry):
        return raw, []
    where: Path_ = ("stages", index)
    if not isinstance(raw, dict) or "method" not in raw:
        return None, [(where, "each stage is a mapping with a `method:` key, e.g. `- method: prune.structured`")]
    fields = dict(raw)
    method, name = fields.pop("method"), fields.pop("name", None)
    errors = [] if name is None else _validated(_SLUG, name, (*where, "name"))[1]
    try:
        stage = registry.get(str(method))
    except EdgeCompressError as err:
        return None, [*errors, ((*where, "method"), f"{err.what}; {err.fix}")]
    config, config_errors = _validated(stage.config, fields, where)
    if errors or config_errors:
        return None, errors + config_errors
    return StageEntry(method=stage.name, name=stage.name if name is None else name, config=config), []


def _validated(schema: type[BaseModel] | TypeAdapter, value: Any, where: Path_) -> tuple[Any, list[Error]]:
    """``value`` validated against ``schema``, or None and its errors at key paths under ``where``."""
    try:
        return (schema.validate_python(value) if isinstance(schema, TypeAdapter) else schema.model_validate(value)), []
    except ValidationError as err:
        root = schema if isinstance(schema, type) else None
        return None, [((*where, *e["loc"]), _describe(e, _model_at(root, tuple(e["loc"])[:-1]))) for e in err.errors()]


# ---- error messages ----------------------------------------------------------------------------------------


def _describe(error: dict, model: type[BaseModel] | None) -> str:
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden" and model is not None:
        key = str(error["loc"][-1])
        close = difflib.get_close_matches(key, model.model_fields, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key {key!r}; {hint}allowed keys: {', '.join(model.model_fields)}"
    if error["type"] not in ("missing", "value_error") and "input" in error:
        msg += f" (got {shown(error['input'])})"
    return msg


def _recipe_error(error: dict) -> Error:
    """A pydantic error of the recipe as (key path, message); ``data``'s errors name the dataset's own options."""
    loc = tuple(error["loc"])
    if len(loc) > 2 and loc[0] == "data" and loc[1] in DATA_OPTIONS:  # tagged union: loc[1] is the dataset name
        return ("data", *loc[2:]), _describe(error, _model_at(DATA_OPTIONS[loc[1]], loc[2:-1]))
    return loc, _describe(error, _model_at(Recipe, loc[:-1]))


def _model_at(root: type[BaseModel] | None, path: Path_) -> type[BaseModel] | None:
    """The pydantic model at key path ``path`` under ``root`` (None when the path leaves the models)."""
    model: Any = root
    for part in path:
        field = getattr(model, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            return None
        model = field.annotation
        model = next((a for a in getattr(model, "__args__", ()) if isinstance(a, type)), model)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line_of(path: Path_, lines: dict[Path_, int]) -> int | None:
    """The line of ``path``, or of its closest ancestor with a known line."""
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path)


def _raise(source: str, errors: list[Error], lines: dict[Path_, int]) -> None:
    located = sorted(((_line_of(path, lines), path, msg) for path, msg in errors), key=lambda e: e[0] or 0)
    rendered = [f"{source}{f':{line}' if line else ''} {_format_path(path)}: {msg}" for line, path, msg in located]
    if len(rendered) > _MAX_SHOWN:
        rendered[_MAX_SHOWN:] = [f"... and {len(rendered) - _MAX_SHOWN} more"]
    raise EdgeCompressError(
        "invalid recipe:\n  " + "\n  ".join(rendered),
        fix="correct the keys named above; `edgecompress methods` lists every stage and its fields",
    )


# ---- validation and loading --------------------------------------------------------------------------------


def parse_recipe(data: Any, source: str = "<recipe>", text: str | None = None) -> Recipe:
    """Validate a recipe given as a dict (``text``, when given, is the YAML it came from, for line numbers)."""
    return _validate(data, source, load_yaml(text, source)[1] if text else {})


def _validate(data: Any, source: str, lines: dict[Path_, int]) -> Recipe:
    """The recipe in ``data``; all its errors (stages and other sections together) raise one EdgeCompressError."""
    if not isinstance(data, dict):
        _raise(source, [((), "a recipe is a YAML mapping with model/data/stages keys")], lines)
    stages, errors = _parse_stages(data.get("stages", []))
    try:
        recipe = Recipe.model_validate({**data, "stages": [] if errors else stages})
    except ValidationError as err:
        errors += [_recipe_error(e) for e in err.errors()]
    if not errors:
        errors += space.check(recipe.search, recipe.stages)
    if errors:
        _raise(source, errors, lines)
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe file (or the name of a packaged recipe, e.g. ``default``)."""
    path = Path(path)
    if not path.exists() and path.suffix == "" and path.name in packaged.names():
        source = f"{path.name} (packaged)"
        data, lines = load_yaml(packaged.text(path.name), source)
        return _validate(data, source, lines)
    if not path.is_file():
        raise EdgeCompressError(
            "recipe file not found", where=str(path),
            fix=f"check the path; packaged recipes: {', '.join(packaged_recipes())}",
        )
    data, lines = load_yaml(read_text(path), str(path))
    return _validate(data, str(path), lines)


def packaged_recipes() -> list[str]:
    return packaged.names()
