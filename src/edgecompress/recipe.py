"""Recipes: model, data, ordered stages, targets and export settings, validated up front.

Errors name the file, the line, the key path (``stages[1].ratio``), the bad value and what is allowed.
Each stage's fields are validated against the config class its method registered.
"""

from __future__ import annotations

import difflib
import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgecompress import registry
from edgecompress.data.datasets import DataSpec
from edgecompress.errors import EdgeCompressError
from edgecompress.registry import StageConfig
from edgecompress.settings import ExportSettings
from edgecompress.zoo.loading import ModelSpec

Path_ = tuple[str | int, ...]


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
    max_accuracy_drop: float | None = Field(1.0, ge=0, description="max accuracy drop in percentage points")
    min_size_reduction: float | None = Field(None, gt=0, description="min (baseline bytes / final bytes)")
    min_macs_reduction: float | None = Field(None, gt=0, description="min (baseline MACs / final MACs)")
    max_latency_ms: float | None = Field(None, gt=0, description="max p50 latency of the final artifact")


class StageEntry(BaseModel):
    """One step of the recipe: a registered method plus its validated config."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    method: str
    name: str
    config: StageConfig

    def to_yaml_dict(self) -> dict[str, Any]:
        extra = {"name": self.name} if self.name != self.method else {}
        return {"method": self.method, **extra, **self.config.model_dump(mode="json")}


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    name: str = Field("recipe", description="shown in reports and default run directory names")
    seed: int = Field(0, description="seed of the run; stage i uses seed + i")
    model: ModelSection | None = Field(None, description="the model (omit when passing one from Python)")
    data: DataSpec = Field(default_factory=DataSpec, description="dataset and splits")
    stages: list[StageEntry] = Field(default_factory=list, description="ordered compression stages")
    targets: Targets = Field(default_factory=Targets)
    export: ExportSettings = Field(default_factory=ExportSettings)

    @model_validator(mode="before")
    @classmethod
    def _parse_stages(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("stages"), list):
            data = {**data, "stages": [_parse_stage(i, s) for i, s in enumerate(data["stages"])]}
        return data

    @model_validator(mode="after")
    def _artifact_stage_last(self) -> Recipe:
        for i, entry in enumerate(self.stages[:-1]):
            if registry.get(entry.method).produces_artifact:
                raise ValueError(
                    f"stages[{i}] {entry.method!r} produces the deployable artifact, so it must be the last stage"
                )
        return self

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude={"stages"}, exclude_none=True)
        data["stages"] = [s.to_yaml_dict() for s in self.stages]
        return yaml.safe_dump(data, sort_keys=False)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:16]


class _StageError(Exception):
    def __init__(self, errors: list[tuple[Path_, str]]):
        self.errors = errors


def _parse_stage(index: int, raw: Any) -> Any:
    if isinstance(raw, StageEntry):
        return raw
    where: Path_ = ("stages", index)
    if not isinstance(raw, dict) or "method" not in raw:
        raise _StageError([(where, "each stage is a mapping with a `method:` key, e.g. `- method: prune.structured`")])
    fields = dict(raw)
    method, name = fields.pop("method"), fields.pop("name", None)
    try:
        stage = registry.get(str(method))
    except EdgeCompressError as err:
        raise _StageError([((*where, "method"), f"{err.what}; {err.fix}")]) from None
    try:
        config = stage.config.model_validate(fields)
    except ValidationError as err:
        raise _StageError([((*where, *e["loc"]), _describe(e, stage.config)) for e in err.errors()]) from None
    return StageEntry(method=stage.name, name=name or stage.name, config=config)


def _describe(error: dict, model: type[BaseModel] | None) -> str:
    msg = error["msg"]
    if error["type"] == "extra_forbidden" and model is not None:
        key = str(error["loc"][-1])
        close = difflib.get_close_matches(key, model.model_fields, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key {key!r}; {hint}allowed keys: {', '.join(model.model_fields)}"
    if error["type"] != "missing" and "input" in error:
        msg += f" (got {error['input']!r})"
    return msg


def _line_map(text: str) -> dict[Path_, int]:
    """Key path -> 1-based line, from the YAML node tree."""
    lines: dict[Path_, int] = {}

    def walk(node: yaml.Node, path: Path_) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[(*path, key.value)] = key.start_mark.line + 1
                walk(value, (*path, key.value))
                lines[(*path, key.value)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _raise(source: str, errors: list[tuple[Path_, str]], lines: dict[Path_, int]) -> None:
    rendered = []
    for path, msg in errors:
        probe = path
        while probe and probe not in lines:
            probe = probe[:-1]
        line = f":{lines[probe]}" if probe in lines else ""
        rendered.append(f"{source}{line} {_format_path(path)}: {msg}")
    raise EdgeCompressError(
        "invalid recipe:\n  " + "\n  ".join(rendered),
        fix="correct the keys named above; `edgecompress methods` lists every stage and its fields",
    )


def parse_recipe(data: Any, source: str = "<recipe>", text: str | None = None) -> Recipe:
    """Validate a recipe given as a dict (``text``, when given, is the YAML it came from, for line numbers)."""
    lines = _line_map(text) if text else {}
    if not isinstance(data, dict):
        _raise(source, [((), "a recipe is a YAML mapping with model/data/stages keys")], lines)
    try:
        return Recipe.model_validate(data)
    except _StageError as err:
        _raise(source, err.errors, lines)
    except ValidationError as err:
        errors = [(tuple(e["loc"]), _describe(e, _model_at(tuple(e["loc"])[:-1]))) for e in err.errors()]
        _raise(source, errors, lines)
    raise AssertionError("unreachable")


def _model_at(path: Path_) -> type[BaseModel] | None:
    model: Any = Recipe
    for part in path:
        field = getattr(model, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            return None
        model = field.annotation
        model = next((a for a in getattr(model, "__args__", ()) if isinstance(a, type)), model)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe file (or the name of a packaged recipe, e.g. ``default``)."""
    path = Path(path)
    if not path.exists() and path.suffix == "":
        packaged = resources.files("edgecompress") / "recipes" / f"{path.name}.yaml"
        if packaged.is_file():
            return parse_recipe(yaml.safe_load(packaged.read_text()), f"{path.name} (packaged)", packaged.read_text())
    if not path.is_file():
        raise EdgeCompressError(
            "recipe file not found", where=str(path),
            fix=f"check the path; packaged recipes: {', '.join(packaged_recipes())}",
        )
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise EdgeCompressError(f"malformed YAML: {getattr(err, 'problem', err)}", where=where,
                                fix="fix the YAML syntax at that line (indentation, colons, quotes)") from None
    return parse_recipe(data, str(path), text)


def packaged_recipes() -> list[str]:
    folder = resources.files("edgecompress") / "recipes"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
