"""Target profiles: what an edge target can run — its ONNX operators, data types, channel alignment and memory.

``load_target("mcu")`` gives a built-in profile; ``load_target("board.yaml")`` reads and validates a user's profile
(the same fields as :class:`TargetProfile`, sizes as bytes or text such as ``256 KiB``). Operator names are checked
against the ONNX operator set (``onnx.defs``), so a typo is an error naming the item and the allowed values.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, field_validator

from edgecompress.errors import EdgeCompressError
from edgecompress.safeyaml import load_yaml, read_text

DType = Literal["float32", "float16", "bfloat16", "int8", "uint8", "int16"]


@functools.lru_cache(maxsize=1)
def onnx_operators() -> tuple[str, ...]:
    """Every operator type of the default ONNX domain, sorted."""
    import onnx.defs

    return tuple(sorted({s.name for s in onnx.defs.get_all_schemas() if s.domain in ("", "ai.onnx")}))


class TargetProfile(BaseModel):
    """An edge target. ``operators`` None: every ONNX operator; ``flash``/``sram`` None: no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="the profile's name")
    description: str = Field("", description="one line shown by `edgecompress check`")
    operators: tuple[str, ...] | None = Field(None, description=(
        "ONNX operator types the target runs (QuantizeLinear/DequantizeLinear encode quantization and are always "
        "allowed); omit for every operator"))
    dtypes: tuple[DType, ...] = Field(("float32",), min_length=1, description=(
        "data types its kernels compute in: a float node needs its float type, a quantized node int8/uint8"))
    channel_alignment: int = Field(1, ge=1, le=1024, description=(
        "conv/linear output channels run at full speed in multiples of this (others are padded)"))
    flash: ByteSize | None = Field(None, description="memory for the weights (bytes, or text such as '1 MiB')")
    sram: ByteSize | None = Field(None, description="memory for the activations live at once (e.g. '256 KiB')")

    @field_validator("operators")
    @classmethod
    def _known_operators(cls, ops: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if ops is None:
            return None
        known = onnx_operators()
        bad = [op for op in ops if op not in known]
        if bad:
            hints = [f"{op!r}" + (f" (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(op, known, n=1))
                                  else "") for op in bad]
            raise ValueError(f"unknown ONNX operator(s) {', '.join(hints)}; allowed values (ONNX operator types): "
                             f"{', '.join(known)}")
        return tuple(dict.fromkeys(ops))

    @property
    def integer_only(self) -> bool:
        return not any(d.startswith(("float", "bfloat")) for d in self.dtypes)

    def runs(self, op_type: str) -> bool:
        return self.operators is None or op_type in self.operators or op_type in ENCODING_OPS


ENCODING_OPS = ("QuantizeLinear", "DequantizeLinear")  # quantization encoded in a QDQ graph, fused by the runtime
_SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Pad", "Shape", "Gather")
_INT_CORE = ("Conv", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
             "Softmax", *_SHAPE_OPS)

BUILTIN: dict[str, TargetProfile] = {p.name: p for p in (
    TargetProfile(name="cpu", description="generic CPU (ONNX Runtime): every operator, float and int8, no memory "
                                          "limit", dtypes=("float32", "float16", "int8", "uint8")),
    TargetProfile(name="npu-int8", description="integer-only NPU: a small operator set (no sigmoid, tanh, GELU or "
                                               "hard-swish), int8 only, 16-channel alignment, 4 MiB SRAM / 16 MiB "
                                               "flash", operators=_INT_CORE, dtypes=("int8",), channel_alignment=16,
                  flash=16 * 2**20, sram=4 * 2**20),
    TargetProfile(name="mcu", description="microcontroller (Cortex-M class, CMSIS-NN style int8 kernels): 256 KiB "
                                          "SRAM / 1 MiB flash, 4-channel alignment",
                  operators=(*_INT_CORE, "HardSwish", "HardSigmoid", "Sigmoid", "Tanh"), dtypes=("int8",),
                  channel_alignment=4, flash=2**20, sram=256 * 2**10),
)}


def load_target(source: str | Path) -> TargetProfile:
    """A built-in profile by name, or a profile YAML file (validated: each error names its key and what is allowed)."""
    if isinstance(source, str) and source in BUILTIN:
        return BUILTIN[source]
    path = Path(source)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        raise EdgeCompressError(f"unknown target {str(source)!r}", where="--target",
                                fix=f"use a built-in target ({', '.join(BUILTIN)}) or a profile YAML file that exists")
    data, _ = load_yaml(read_text(path), str(path))
    try:
        return TargetProfile.model_validate(data)
    except ValidationError as err:
        from edgecompress.recipe import _describe  # the recipe's wording: unknown keys get the closest and the allowed

        lines = [f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {_describe(e, TargetProfile)}" for e in err.errors()]
        raise EdgeCompressError("invalid target profile:\n  " + "\n  ".join(lines), where=str(path),
                                fix=f"correct the keys named above; allowed keys: {', '.join(TargetProfile.model_fields)}"
                                ) from None
