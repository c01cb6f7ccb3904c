"""The search space of ``search.nas``: per stage of the ``nas_cnn`` family, the choices of depth, width multiplier
(of the stage's base channels), kernel size, activation and block type. Written in the recipe or in its own YAML
file, validated up front: an empty choice list, a repeated or impossible value, widths that round to the same
channel count, a space with a single architecture, or more pooling stages than the input has pixels is an
error that names the key and the fix."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edgecompress.errors import EdgeCompressError
from edgecompress.zoo.layers import scaled
from edgecompress.zoo.searchable import ACTIVATIONS, BLOCKS


def _choices(values: list, what: str) -> list:
    if not values:
        raise ValueError(f"the {what} choices are empty: give at least one value")
    if len(set(values)) != len(values):
        raise ValueError(f"the {what} choices repeat a value: {values}")
    return values


class StageChoices(BaseModel):
    """The choices of one stage (one value fixes it)."""

    model_config = ConfigDict(extra="forbid")
    channels: int = Field(ge=1, le=4096, description="base output channels, scaled by each width multiplier")
    depth: list[int] = Field([1, 2], description="blocks in the stage (each >= 1)")
    width: list[float] = Field([0.5, 1.0], description="width multipliers of the base channels (each > 0)")
    kernel: list[int] = Field([3], description="kernel sizes (odd)")
    activation: list[str] = Field(["relu"], description=f"activations: {', '.join(ACTIVATIONS)}")
    block: list[str] = Field(["conv"], description=f"block types: {', '.join(BLOCKS)}")

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: list[int]) -> list[int]:
        if any(d < 1 or d > 16 for d in _choices(v, "depth")):
            raise ValueError(f"depths must be 1 to 16, got {v}")
        return v

    @field_validator("width")
    @classmethod
    def _width(cls, v: list[float]) -> list[float]:
        if any(not 0 < w <= 8 for w in _choices(v, "width")):
            raise ValueError(f"width multipliers must be in (0, 8], got {v}")
        return v

    @field_validator("kernel")
    @classmethod
    def _kernel(cls, v: list[int]) -> list[int]:
        if any(k < 1 or k % 2 == 0 or k > 15 for k in _choices(v, "kernel")):
            raise ValueError(f"kernel sizes must be odd, 1 to 15 (an even kernel shifts the map), got {v}")
        return v

    @field_validator("activation", "block")
    @classmethod
    def _known(cls, v: list[str], info: ValidationInfo) -> list[str]:
        known = {"activation": ACTIVATIONS, "block": BLOCKS}[info.field_name]
        unknown = [x for x in _choices(v, info.field_name) if x not in known]
        if unknown:
            raise ValueError(f"unknown {info.field_name} choice(s) {unknown}: use {', '.join(known)}")
        return v

    @model_validator(mode="after")
    def _distinct_widths(self) -> StageChoices:
        counts = [scaled(self.channels, w) for w in self.width]
        if len(set(counts)) != len(counts):
            raise ValueError(f"width multipliers {self.width} of {self.channels} channels give the channel counts "
                             f"{counts}, some the same: use widths that differ by at least 1/{self.channels}")
        return self

    @property
    def size(self) -> int:
        return len(self.depth) * len(self.width) * len(self.kernel) * len(self.activation) * len(self.block)


DEFAULT_STAGES = [
    StageChoices(channels=16, depth=[1, 2], width=[0.5, 0.75, 1.0], kernel=[3, 5], activation=["relu", "hardswish"],
                 block=["conv", "dsconv"]),
    StageChoices(channels=32, depth=[1, 2], width=[0.5, 0.75, 1.0], kernel=[3, 5], activation=["relu", "hardswish"],
                 block=["conv", "dsconv", "mbconv"]),
    StageChoices(channels=64, depth=[1, 2], width=[0.5, 0.75, 1.0], kernel=[3], activation=["relu", "hardswish"],
                 block=["conv", "dsconv", "mbconv"]),
]


class SearchSpace(BaseModel):
    """The stages of the searched ``nas_cnn`` (a 2x2 max-pool before every stage after the first)."""

    model_config = ConfigDict(extra="forbid")
    stages: list[StageChoices] = Field(DEFAULT_STAGES, min_length=1, max_length=8,
                                       description="one entry of choices per stage")

    @model_validator(mode="after")
    def _searchable(self) -> SearchSpace:
        if self.size < 2:
            raise ValueError("the search space holds a single architecture: give some stage a second choice")
        return self

    @property
    def size(self) -> int:
        """How many architectures the space holds."""
        return math.prod(s.size for s in self.stages)

    def check_input(self, input_shape: tuple[int, ...], where: str) -> None:
        """Refuse inputs the space cannot take: not an image, or pooled below 1x1 by the stages."""
        if len(input_shape) != 3:
            raise EdgeCompressError(f"the search space builds 2-D CNNs, but the data's inputs are shaped "
                                    f"{tuple(input_shape)}", where=where, fix="search on image data (C, H, W)")
        smallest = min(input_shape[1:])
        if smallest < 2 ** (len(self.stages) - 1):
            raise EdgeCompressError(
                f"{len(self.stages)} stages halve the input {len(self.stages) - 1} times, but it is only "
                f"{smallest} pixels wide", where=f"{where}.stages",
                fix=f"use at most {int(math.log2(smallest)) + 1} stages for {smallest}-pixel inputs")

    def sample(self, trial: optuna.Trial) -> list[dict[str, Any]]:
        """The ``nas_cnn`` stages a trial picks (one categorical parameter per choice list)."""
        stages = []
        for i, s in enumerate(self.stages):
            pick = {key: trial.suggest_categorical(f"s{i}.{key}", getattr(s, key))
                    for key in ("depth", "width", "kernel", "activation", "block")}
            width = pick.pop("width")
            stages.append({**pick, "channels": scaled(s.channels, width)})
        return stages


def load_space(value: Any) -> Any:
    """A search space given as a YAML file path: its parsed content (inline mappings pass through)."""
    if not isinstance(value, str | Path):
        return value
    from edgecompress.safeyaml import load_yaml, read_text

    path = Path(value)
    if not path.is_file():
        raise ValueError(f"search-space file {str(path)!r} not found: give a YAML file or the space inline")
    return load_yaml(read_text(path), str(path))[0]
