"""Settings shared by the recipe, the pipeline and stages that export or benchmark."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# format -> the runtime that runs it ("fastest" is resolved by the pipeline to one of the first two)
FORMAT_RUNTIME = {"onnx": "onnxruntime", "executorch": "executorch", "pytorch": "torch"}


class ExportSettings(BaseModel):
    """How the deployable artifact is written and run."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["onnx", "executorch", "pytorch", "fastest"] = Field(
        "onnx", description="artifact format: ONNX file, ExecuTorch .pte (XNNPACK), torch.export archive, or fastest "
                            "(onnx or executorch, whichever runs the baseline faster with these threads and batch)",
    )
    runtime: Literal["onnxruntime", "executorch", "torch"] = Field(
        "onnxruntime", description="runtime that runs the artifact (default: the one that runs the format)",
    )
    opset: int = Field(17, ge=13, le=21, description="ONNX opset")
    threads: int = Field(1, ge=1, le=256, description="runtime intra-op threads for latency")
    batch: int = Field(1, ge=1, le=4096, description="batch size for latency/throughput")
    warmup: int = Field(10, ge=0, description="untimed runs before timing")
    repeats: int = Field(50, ge=1, description="timed runs")

    @model_validator(mode="before")
    @classmethod
    def _runtime_follows_format(cls, data: object) -> object:
        """A format given without a runtime gets the runtime that runs it."""
        fmt = data.get("format") if isinstance(data, dict) else None
        if isinstance(fmt, str) and fmt in FORMAT_RUNTIME and "runtime" not in data:  # a list/dict is left to pydantic
            data = {**data, "runtime": FORMAT_RUNTIME[fmt]}
        return data
