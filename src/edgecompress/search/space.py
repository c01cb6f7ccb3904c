"""The ``search:`` section of a recipe: which stage fields ``edgecompress tune`` varies, and over what.

Keys are stage names (a stage's ``name:``, else its method); under each, a stage field maps to a range
(``{low, high}``, optional ``step`` or ``log``) or to choices (a list, or ``{choices: [...]}``), and
``optional: true`` lets the search also leave the stage out. The section is checked on its own (a range whose
low is not below its high, one choice, repeated choices) and against the recipe's stages (an unknown stage or
field, a value the field refuses, a range over a field that is not a number)::

    search:
      prune.structured:
        ratio: {low: 0.3, high: 0.85, step: 0.05}
        criterion: [l2, taylor]
      finetune:
        epochs: {low: 3, high: 15}
      quant.ptq:
        optional: true
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Annotated, Any, get_args

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, ValidationError, model_validator

from edgecompress.safeyaml import Path_, shown

if TYPE_CHECKING:
    import optuna

    from edgecompress.recipe import StageEntry

Error = tuple[Path_, str]  # key path, message (as recipe.py reports them)


class Range(BaseModel):
    """Numbers from ``low`` to ``high`` (whole numbers when the field takes them): evenly in ``step``s, or on a
    log scale with ``log: true``."""

    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Range:
        if self.low >= self.high:
            raise ValueError(f"an empty range: low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and (self.step is not None or self.low <= 0):
            raise ValueError("log: true needs low > 0 and no step")
        if self.step is not None and self.step > self.high - self.low:
            raise ValueError(f"step {self.step:g} is wider than the range {self.low:g}..{self.high:g}: it holds "
                             "one value; set the field in the stage instead")
        return self


class Choices(BaseModel):
    """One of the listed values."""

    model_config = ConfigDict(extra="forbid")
    choices: list[Any] = Field(min_length=2)

    @model_validator(mode="after")
    def _distinct(self) -> Choices:
        if not all(c is None or isinstance(c, (str, int, float, bool)) for c in self.choices):
            raise ValueError(f"choices are plain values (text, numbers, true/false, null), not {shown(self.choices)}")
        if len({repr(c) for c in self.choices}) < len(self.choices):
            raise ValueError(f"repeated choices in {shown(self.choices)}: list each value once")
        return self


def _param(value: Any) -> Range | Choices:
    """A range (a mapping with low and high) or choices (a list, or a mapping with ``choices``)."""
    if isinstance(value, (Range, Choices)):
        return value
    value = {"choices": value} if isinstance(value, list) else value
    if not isinstance(value, dict):
        raise ValueError(f"{shown(value)} is neither a range ({{low: 0.3, high: 0.8}}) nor a list of choices")
    model = Choices if "choices" in value else Range
    unknown = sorted(str(k) for k in value if k not in model.model_fields)  # YAML keys may be numbers
    if unknown:
        close = difflib.get_close_matches(unknown[0], [*Range.model_fields, "choices"], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown key {unknown[0]!r}; {hint}a range has low, high, step and log; choices have "
                         "`choices` only")
    try:
        return model.model_validate(value)
    except ValidationError as err:
        raise ValueError("; ".join(("".join(f"{p}: " for p in e["loc"])) + e["msg"].removeprefix("Value error, ")
                                   for e in err.errors())) from None


def _dump(value: Range | Choices) -> Any:
    """As the recipe writes it: choices as a list, a range without its defaults."""
    return list(value.choices) if isinstance(value, Choices) else value.model_dump(exclude_defaults=True)


Param = Annotated[Range | Choices, PlainValidator(_param), PlainSerializer(_dump)]


class StageSpace(BaseModel):
    """What varies in one stage: its fields (ranges or choices) and, with ``optional``, whether it runs at all."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Param]
    optional: bool = Field(False, description="the search also tries the recipe without this stage")

    @property
    def fields(self) -> dict[str, Range | Choices]:
        return dict(self.__pydantic_extra__ or {})


def check(search: dict[str, StageSpace] | None, stages: list[StageEntry]) -> list[Error]:
    """The errors of ``search`` against the recipe's ``stages`` (none when there is no ``search:`` section)."""
    if search is None:
        return []
    if not search:
        return [(("search",), "an empty search space: name at least one stage and a field to vary (see "
                              "`edgecompress tune --help`)")]
    by_name: dict[str, list[int]] = {}
    for i, entry in enumerate(stages):
        by_name.setdefault(entry.name, []).append(i)
    errors: list[Error] = []
    for name, space in search.items():
        where: Path_ = ("search", name)
        if name not in by_name:
            close = difflib.get_close_matches(name, by_name, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            errors.append((where, f"no stage is named {name!r}; {hint}the recipe's stages: {', '.join(by_name)}"))
        elif len(by_name[name]) > 1:
            errors.append((where, f"{len(by_name[name])} stages are named {name!r}: give each a distinct `name:`"))
        elif not space.fields and not space.optional:
            errors.append((where, "nothing to search: add a field with a range or choices, or `optional: true`"))
        else:
            errors += _check_fields(stages[by_name[name][0]], space, where)
    return errors


def _check_fields(entry: StageEntry, space: StageSpace, where: Path_) -> list[Error]:
    known = type(entry.config).model_fields
    errors: list[Error] = []
    for field, param in space.fields.items():
        if field not in known:
            close = difflib.get_close_matches(field, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            errors.append(((*where, field), f"{entry.method} has no field {field!r}; {hint}its fields: "
                                            f"{', '.join(known)}"))
            continue
        if isinstance(param, Range) and _number_type(entry, field) is None:
            errors.append(((*where, field), f"a range needs a number field, and {field} is "
                                            f"{shown(getattr(entry.config, field))}: list choices instead"))
            continue
        named = zip(["choices"] * len(param.choices), param.choices) if isinstance(param, Choices) else \
            [("low", param.low), ("high", param.high)]
        for key, value in named:
            try:
                setattr(entry.config.model_copy(), field, _whole(value, entry, field))
            except (ValidationError, ValueError) as err:
                reason = err.errors()[0]["msg"].removeprefix("Value error, ") if isinstance(err, ValidationError) \
                    else str(err)
                errors.append(((*where, field, key), f"{shown(value)} is not a valid {entry.method} {field}: {reason}"))
    return errors


def _number_type(entry: StageEntry, field: str) -> type | None:
    """``int`` or ``float`` when the stage's ``field`` takes numbers of that kind (else None: text, flags, ...)."""
    annotation = type(entry.config).model_fields[field].annotation
    types = set(get_args(annotation)) or {annotation}  # X | None lists its members
    return float if float in types else int if int in types else None


def _whole(value: Any, entry: StageEntry, field: str) -> Any:
    """A range end of an int field as an int (YAML's ``3`` arrives as 3.0 through ``Range``)."""
    whole = isinstance(value, float) and value.is_integer() and _number_type(entry, field) is int
    return int(value) if whole else value


def suggest(trial: optuna.Trial, search: dict[str, StageSpace], stages: list[StageEntry]) -> dict[str, dict]:
    """The trial's values: per searched stage name, its field values, and ``optional`` -> whether it runs."""
    entries = {e.name: e for e in stages}
    chosen: dict[str, dict] = {}
    for name, space in search.items():
        values: dict[str, Any] = {}
        if space.optional:
            values["optional"] = trial.suggest_categorical(f"{name}.run", [True, False])
        for field, p in space.fields.items():
            key = f"{name}.{field}"
            if isinstance(p, Choices):
                values[field] = trial.suggest_categorical(key, p.choices)
            elif _number_type(entries[name], field) is int:
                values[field] = trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                values[field] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
        chosen[name] = values
    return chosen


def recipe_values(search: dict[str, StageSpace], stages: list[StageEntry]) -> dict[str, Any]:
    """The recipe's own values as trial parameters (the search's first candidate), where they lie in the space."""
    entries = {e.name: e for e in stages}
    values: dict[str, Any] = {}
    for name, space in search.items():
        if space.optional:
            values[f"{name}.run"] = True
        for field, p in space.fields.items():
            value = getattr(entries[name].config, field)
            inside = value in p.choices if isinstance(p, Choices) else \
                isinstance(value, (int, float)) and p.low <= value <= p.high
            if inside:
                values[f"{name}.{field}"] = value
    return values


def apply(stages: list[StageEntry], chosen: dict[str, dict]) -> list[StageEntry]:
    """``stages`` with the chosen values set, without the optional stages the trial leaves out."""
    out = []
    for entry in stages:
        values = dict(chosen.get(entry.name, {}))
        if not values.pop("optional", True):
            continue
        config = entry.config.model_copy()
        for field, value in values.items():
            setattr(config, field, value)  # validated (the config validates on assignment)
        out.append(entry.model_copy(update={"config": config}))
    return out
