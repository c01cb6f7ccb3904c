"""Where compression work runs: a recipe's ``device`` resolved to a torch device, checked before any work, the
one helper that moves models between devices (the pipeline moves every stage's model and teacher with it), and
the number of CPU threads torch uses for the run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from edgecompress.errors import EdgeCompressError

CPU = torch.device("cpu")
_FIX = "use `device: auto` (the GPU when there is one, else the CPU) or `device: cpu`, in the recipe or as --device"


def resolve_device(spec: str) -> torch.device:
    """The torch device of a recipe's ``device`` (auto, cpu, cuda, cuda:N), with the GPU index made explicit.

    ``auto`` is the current CUDA GPU when PyTorch sees one, else the CPU. A CUDA device that is not there raises
    an EdgeCompressError that says why and suggests ``auto`` or ``cpu``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        why = ("this PyTorch build has no CUDA support" if torch.version.cuda is None else
               "PyTorch sees no CUDA GPU (no GPU, no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides it)")
        raise EdgeCompressError(f"{spec!r} needs a CUDA GPU, but this machine has none: {why}",
                                where="device", fix=_FIX)
    if device.index is not None and device.index >= count:
        raise EdgeCompressError(f"there is no CUDA GPU {device.index} ({spec!r}): this machine has {count} "
                                f"(cuda:0 to cuda:{count - 1})", where="device",
                                fix=f"use cuda:0 to cuda:{count - 1}, or `device: auto`")
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


def move(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with its parameters and buffers on ``device`` (moved in place; a no-op where they already are)."""
    return model.to(device)


def default_threads() -> int:
    """Half the CPUs this process may use, at least 1: the physical cores on machines with two hardware threads per
    core, and 1 on a 2-CPU machine (where small models train several times faster on one thread than on two)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, usable // 2)


@contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """torch's intra-op thread count set to ``threads`` inside the block (it is process-wide: restored after)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
