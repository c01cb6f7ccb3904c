"""Settings shared by the recipe, the pipeline and stages that export or benchmark."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ExportSettings(BaseModel):
    """How the deployable artifact is written and run."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["onnx", "pytorch"] = Field("onnx", description="artifact format: ONNX file or torch.export archive")
    runtime: Literal["onnxruntime", "torch"] = Field("onnxruntime", description="runtime that runs the artifact")
    opset: int = Field(17, ge=13, le=21, description="ONNX opset")
    threads: int = Field(1, ge=1, le=256, description="runtime intra-op threads for latency")
    batch: int = Field(1, ge=1, le=4096, description="batch size for latency/throughput")
    warmup: int = Field(10, ge=0, description="untimed runs before timing")
    repeats: int = Field(50, ge=1, description="timed runs")
