"""Round-to-nearest low-bit weight quantization of a 2-D weight view ``[rows, K]`` (rows = output channels,
K = inputs per output: ``in * kh * kw`` for a Conv), one scale per row or per group of ``group`` consecutive
columns.

Symmetric (default): ``scale = max|w| / (2^(b-1) - 1)`` per group, ``q = clamp(round(w / scale), -qmax, qmax)``,
``w ~ q * scale``. Asymmetric: the group's range ``[min(w, 0), max(w, 0)]`` is mapped onto
``[-2^(b-1), 2^(b-1) - 1]`` with an integer zero point, ``w ~ (q - zero) * scale``. A group that is all zero
gets scale 1 (its codes are 0).

Storage: codes of 2-4 bits live in an INT4 container (two per byte), 5-8 bits in INT8 (so 3-bit weights take
the bytes of 4-bit ones: the saving of 3 bits over 4 is accuracy-only here). Scales are float32; a K that the
group size does not divide ends with a smaller last group (ONNX blocked quantization has ``ceil(K / block)``
scales per row), and a layer with ``K <= group`` gets one scale per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MIN_BITS, MAX_BITS = 2, 8
SCALE_BYTES = 4  # float32 scales


def container_bits(bits: int) -> int:
    """The stored integer width of ``bits``-bit codes: INT4 up to 4 bits, INT8 above."""
    return 4 if bits <= 4 else 8


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of ``count`` codes packed in their container (INT4: ``ceil(count / 2)``)."""
    return math.ceil(count * container_bits(bits) / 8)


@dataclass(frozen=True)
class QuantSpec:
    """How one layer's weights are quantized: bit width, columns per scale (0: one per row), symmetry."""

    bits: int
    group_size: int = 0
    symmetric: bool = True

    def group(self, k: int) -> int:
        """The columns per scale for a layer with ``k`` inputs per output (``k`` itself when per row)."""
        return k if self.group_size == 0 or self.group_size >= k else self.group_size

    @property
    def qrange(self) -> tuple[int, int]:
        half = 2 ** (self.bits - 1)
        return (-(half - 1) if self.symmetric else -half), half - 1

    def nbytes(self, rows: int, k: int) -> int:
        """Bytes of a ``[rows, k]`` weight stored with this spec: packed codes, scales, zero points."""
        groups = rows * math.ceil(k / self.group(k))
        zeros = 0 if self.symmetric else packed_bytes(groups, self.bits)
        return packed_bytes(rows * k, self.bits) + SCALE_BYTES * groups + zeros


@dataclass
class QuantizedWeight:
    """Integer codes ``[rows, K]`` (int8 tensor), scales ``[rows, groups]`` (float32), zero points
    ``[rows, groups]`` (int8, asymmetric only) and the spec that made them."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    spec: QuantSpec

    @property
    def group(self) -> int:
        return self.spec.group(self.codes.shape[1])

    def dequantize(self) -> torch.Tensor:
        """The float32 weights ``(q - zero) * scale`` that the ONNX ``DequantizeLinear`` computes."""
        k = self.codes.shape[1]
        q = self.codes.float()
        if self.zero is not None:
            q = q - self.zero.float().repeat_interleave(self.group, dim=1)[:, :k]
        return q * self.scale.repeat_interleave(self.group, dim=1)[:, :k]

    @property
    def nbytes(self) -> int:
        return self.spec.nbytes(*self.codes.shape)


def group_params(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (and zero point) of each row of ``w`` ``[rows, cols]`` treated as one group: ``[rows]`` each."""
    qmin, qmax = spec.qrange
    if spec.symmetric:
        amax = w.abs().amax(dim=1)
        return torch.where(amax > 0, amax / qmax, torch.ones_like(amax)), None
    lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
    scale = torch.where(hi > lo, (hi - lo) / (qmax - qmin), torch.ones_like(hi))
    return scale, torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: QuantSpec) -> torch.Tensor:
    """``clamp(round(w / scale) + zero, qmin, qmax)`` with ``scale``/``zero`` broadcast against ``w``."""
    q = torch.round(w / scale)
    if zero is not None:
        q = q + zero
    return torch.clamp(q, *spec.qrange)


def rtn(w: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Round-to-nearest quantization of ``w`` ``[rows, K]`` with per-group scales from the weights themselves."""
    rows, k = w.shape
    g = spec.group(k)
    groups = math.ceil(k / g)
    padded = torch.nn.functional.pad(w.detach().float(), (0, groups * g - k))  # zeros change no group's range
    flat = padded.reshape(rows * groups, g)
    scale, zero = group_params(flat, spec)
    codes = quantize_codes(flat, scale[:, None], None if zero is None else zero[:, None], spec)
    shape = (rows, groups)
    return QuantizedWeight(codes.reshape(rows, -1)[:, :k].to(torch.int8), scale.reshape(shape).float(),
                           None if zero is None else zero.reshape(shape).to(torch.int8), spec)
