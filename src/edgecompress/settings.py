"""Settings shared by the recipe, the pipeline and stages that export or benchmark."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgecompress.runtimes import all_runtimes, for_format

_RUNTIMES = all_runtimes()  # registered ones: a recipe may name their formats and runtimes
_FORMATS = (*(r.format for r in _RUNTIMES), "fastest")  # "fastest": the pipeline picks one of the compared formats
_NAMES = tuple(r.name for r in _RUNTIMES)
_FORMATS_TEXT = ", ".join(f"{r.format} ({r.label})" for r in _RUNTIMES)
_COMPARED = " or ".join(r.format for r in _RUNTIMES if r.compared)


class ExportSettings(BaseModel):
    """How the deployable artifact is written and run."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[_FORMATS] = Field(
        "onnx", description=f"artifact format: {_FORMATS_TEXT}, or fastest ({_COMPARED}, whichever runs the baseline "
                            "faster with these threads and batch)",
    )
    runtime: Literal[_NAMES] = Field(
        "onnxruntime", description="runtime that runs the artifact (default: the one that runs the format)",
    )
    opset: int = Field(17, ge=13, le=21, description="ONNX opset")
    threads: int = Field(1, ge=1, le=256, description="runtime intra-op threads for latency")
    batch: int = Field(1, ge=1, le=4096, description="batch size for latency/throughput")
    warmup: int = Field(10, ge=0, description="untimed runs before timing")
    repeats: int = Field(50, ge=1, description="timed runs")
    rounds: int = Field(7, ge=2, le=100, description="interleaved rounds when artifacts are compared side by side "
                                                     "(a speed-up is the median per-round ratio, with its spread)")

    @model_validator(mode="before")
    @classmethod
    def _runtime_follows_format(cls, data: object) -> object:
        """A format given without a runtime gets the runtime that runs it."""
        fmt = data.get("format") if isinstance(data, dict) else None
        runtime = for_format(fmt) if isinstance(fmt, str) else None  # a list/dict is left to pydantic
        if runtime is not None and "runtime" not in data:
            data = {**data, "runtime": runtime.name}
        return data
