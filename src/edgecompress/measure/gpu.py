"""Latency and energy of a PyTorch model on a CUDA GPU (runs whose device is CUDA; artifacts are measured on the
CPU as always).

Latency: ``repeats`` forward passes after ``warmup`` untimed ones, each timed between two CUDA events
(``torch.cuda.Event(enable_timing=True)``) recorded on the current stream and read after a synchronize; median,
p95 and mean in ms. Energy: NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since
the driver loaded; Volta and newer GPUs) read around a loop of at least ``energy_seconds``, per sample. It is the
whole board's energy, idle power included. nvidia-ml-py (``import pynvml``) is optional and imported only here:
without it, or on a GPU without the counter, the energy is left out and ``gpu_energy_source`` says why.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

NVML_SOURCE = "measured (NVML total energy counter, whole board)"


def gpu_metrics(model: nn.Module, input_shape: tuple[int, ...], device: torch.device, *, batch: int = 1,
                warmup: int = 10, repeats: int = 50, energy_seconds: float = 1.0) -> dict[str, Any]:
    """``gpu_latency_ms`` (median), ``gpu_latency_p95_ms``, ``gpu_latency_mean_ms``, ``gpu_energy_mj`` (per sample,
    when NVML has it) and ``gpu_energy_source``, ``gpu_name``, ``gpu_batch`` of a copy of ``model`` in eval mode on
    ``device``, on standard-normal inputs of ``batch`` samples (timing only)."""
    net = copy.deepcopy(model).to(device).eval()
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.cuda.device(device), torch.no_grad():
        times = cuda_event_times(net, x, warmup, repeats)
        energy = nvml_energy(net, x, device, energy_seconds)
    return {"gpu_latency_ms": statistics.median(times), "gpu_latency_p95_ms": _p95(times),
            "gpu_latency_mean_ms": statistics.fmean(times), **energy,
            "gpu_name": torch.cuda.get_device_name(device), "gpu_batch": batch}


def cuda_event_times(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` forward passes on the current CUDA device, after ``warmup`` passes."""
    for _ in range(warmup):
        model(x)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    torch.cuda.synchronize()
    for start, end in events:
        start.record()
        model(x)
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def nvml_energy(model: nn.Module, x: torch.Tensor, device: torch.device, seconds: float) -> dict[str, Any]:
    """``gpu_energy_mj`` per sample from NVML and its source; only the source (saying why) when it cannot be read."""
    try:
        import pynvml
    except ImportError:
        return {"gpu_energy_source": "not measured: nvidia-ml-py (pynvml) is not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        return {"gpu_energy_source": f"not measured: NVML did not start ({err})"}
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(_nvml_index(device))

        def run() -> int:
            model(x)
            torch.cuda.synchronize(device)
            return len(x)

        mj = energy_per_sample(lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle), run, seconds)
    except pynvml.NVMLError as err:  # e.g. NVMLError_NotSupported before Volta
        return {"gpu_energy_source": f"not measured: NVML energy counter unavailable ({err})"}
    finally:
        pynvml.nvmlShutdown()
    return {"gpu_energy_mj": mj, "gpu_energy_source": NVML_SOURCE}


def energy_per_sample(read_mj: Callable[[], float], run: Callable[[], int], seconds: float) -> float:
    """Millijoules per sample: the counter ``read_mj`` before and after calling ``run`` (which returns the samples
    it ran) until at least ``seconds`` have passed (the counter updates in steps, so short loops read nothing)."""
    samples, start_mj, began = 0, read_mj(), time.perf_counter()
    while samples == 0 or time.perf_counter() - began < seconds:
        samples += run()
    return (read_mj() - start_mj) / samples


def _nvml_index(device: torch.device) -> int:
    """NVML numbers every GPU, CUDA only the visible ones (CUDA_VISIBLE_DEVICES); torch maps one to the other (with
    the helper its own ``torch.cuda.power_draw`` uses)."""
    index = torch.cuda.current_device() if device.index is None else device.index
    return getattr(torch.cuda, "_get_nvml_device_index", lambda i: i)(index)  # private: absent, assume the same


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]
