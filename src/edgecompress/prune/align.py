"""Channel alignment: pruned channel counts that the deployment runtime runs on its fast path.

CPU runtimes compute convolutions and matrix products in blocks of output channels as wide as one vector
register: ONNX Runtime's MLAS packs weights for its NCHWc convolutions in blocks of 16 floats on AVX-512 and 8 on
AVX2, and oneDNN (torch) blocks channels the same way; XNNPACK (ExecuTorch) tiles at least 8 channels. A layer
whose channel count is not a multiple of the block falls off that path or pays for padding and layout changes,
so a pruned model with, say, 45 channels per layer can be slower per MAC than the original. Each registered
runtime says which multiple it wants for the CPU's float lanes (``Runtime.channel_multiple``); the structured
stages round the channels they keep to it (``round_to: auto``, the default).

Written here because torch-pruning's own ``round_to`` rounds the kept count *down* (a 16-channel layer pruned
by 30% with ``round_to=16`` would keep none); :func:`aligned_keep` rounds to the *nearest* multiple and never
below one block, and aligns a layer no wider than one block to half a block (an 8-channel convolution still runs
faster than a 16-channel one, a 12-channel one does not).
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path
from typing import Annotated, Literal

import torch_pruning as tp
from pydantic import Field

from edgecompress.registry import StageConfig

log = logging.getLogger("edgecompress")

Alignment = Annotated[int, Field(ge=1, le=1024)] | Literal["auto"]


class AlignedConfig(StageConfig):
    """The ``round_to`` setting every structured stage shares."""

    round_to: Alignment = Field(
        "auto", description="keep channel counts multiples of this (to the nearest multiple; layers no wider than "
                            "one multiple: of half of it); auto: the block the export runtime wants on this CPU "
                            "(16 with AVX-512, 8 with AVX2); 1 turns alignment off")


@functools.cache
def cpu_float_lanes() -> int:
    """float32 values in one vector register of this CPU: 16 (AVX-512), 8 (AVX/AVX2), else 4 (SSE, NEON)."""
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if "avx512f" in flags:
        return 16
    if "avx2" in flags or "avx" in flags or (not flags and platform.machine() in ("x86_64", "AMD64")):
        return 8
    return 4


def resolve(round_to: Alignment, runtime: str, where: str) -> int:
    """The channel multiple to use: ``round_to`` itself, or with ``auto`` the one ``runtime`` wants on this CPU.
    A multiple of 1 (alignment off) is logged as a warning naming what it costs."""
    from edgecompress.runtimes import get

    if round_to == "auto":
        return get(runtime).channel_multiple(cpu_float_lanes())
    if round_to == 1:
        wanted = get(runtime).channel_multiple(cpu_float_lanes())
        log.warning("%s: round_to 1 turns channel alignment off; %s runs layers whose channels are multiples of %d "
                    "faster per MAC on this CPU (round_to: auto)", where, get(runtime).label, wanted)
    return round_to


def aligned_keep(keep: int, channels: int, multiple: int, up: bool = False) -> int:
    """Channels to keep of ``channels`` when about ``keep`` are wanted: the nearest multiple of ``multiple`` (ties
    up; with ``up`` the next one up), at least one multiple, at most ``channels``. For a layer no wider than
    ``multiple`` the multiple is halved until it is narrower than the layer, so small layers can still lose
    channels."""
    if multiple <= 1 or keep >= channels:
        return min(keep, channels)
    while multiple > 1 and channels <= multiple:
        multiple //= 2
    if multiple <= 1:
        return keep
    rounded = -(-keep // multiple) if up else (keep + multiple // 2) // multiple
    return min(max(multiple, multiple * rounded), channels)


class AlignedPruner(tp.pruner.MetaPruner):
    """torch-pruning's MetaPruner with channel counts rounded to the nearest multiple (:func:`aligned_keep`),
    not down as torch-pruning does."""

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        return current_channels - aligned_keep(current_channels - n_pruned, current_channels, round_to)
