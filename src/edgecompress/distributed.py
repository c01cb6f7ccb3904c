"""Data-parallel work under ``torchrun``: one process per rank, ``torch.distributed`` (gloo on the CPU, NCCL on
GPUs) joining them.

``torchrun --nproc-per-node N edgecompress run RECIPE`` runs the same recipe in N processes. :func:`start` joins
the process group (after checking that the loopback interface is up: without a network the rendezvous on
127.0.0.1 needs it; torchrun's own agent meets there first and fails by itself when it is down, so the check
serves processes started by other launchers, and a failed join names the interface too), :func:`rank_dir` gives rank 0 the run directory and every other rank a private scratch copy,
so only rank 0 writes the user's run. Training (:func:`edgecompress.train.train`) wraps the model in
``DistributedDataParallel`` and gives each rank its share of every global batch (:func:`local_part`): the global
batch stays the recipe's ``batch_size``, so a recipe needs no change. Calibration statistics are sums; the
sequential engine's consumers give each rank every world-th batch (:func:`shard_batches`) and add the ranks'
sums with :func:`all_reduce_sum` before using them, so the result equals one process up to float64 rounding.

Outside ``torchrun`` (or with one process) every helper is the identity: world size 1, rank 0.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from edgecompress.errors import EdgeCompressError

LOOPBACK_FLAGS = Path("/sys/class/net/lo/flags")
IFF_UP = 0x1


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group of more than one process is joined."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def loopback_up(flags: Path = LOOPBACK_FLAGS) -> bool:
    """Whether the loopback interface is up (True where Linux's interface flags cannot be read)."""
    try:
        return bool(int(flags.read_text().strip(), 16) & IFF_UP)
    except (OSError, ValueError):
        return True


def check_loopback(flags: Path = LOOPBACK_FLAGS) -> None:
    """Refuse to rendezvous on 127.0.0.1 when the loopback interface is down (it would hang, then time out)."""
    if os.environ.get("MASTER_ADDR", "127.0.0.1") in ("127.0.0.1", "localhost") and not loopback_up(flags):
        raise EdgeCompressError(
            "torchrun's processes meet on 127.0.0.1, but the loopback interface `lo` is down", where="torchrun",
            fix="bring it up with `ip link set lo up` (as root; a container without a network starts with it "
                "down), or run one process without torchrun")


def start(device: str) -> str:
    """Join the process group when launched by ``torchrun`` (gloo for ``device`` cpu, NCCL for cuda); returns
    the device this rank works on (``cuda:LOCAL_RANK`` when the run uses CUDA). A no-op without torchrun."""
    if not launched() or active():
        return device
    check_loopback()
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    except (RuntimeError, ValueError) as err:  # DistNetworkError / DistStoreError are RuntimeErrors
        raise EdgeCompressError(f"the {os.environ.get('WORLD_SIZE')} processes could not join: "
                                f"{str(err).splitlines()[0]}", where="torchrun",
                                fix="check MASTER_ADDR/MASTER_PORT and that the loopback interface is up "
                                    "(`ip link set lo up`), or run one process without torchrun") from None
    return device


def stop() -> None:
    """Leave the process group (every rank waits for the others first)."""
    if active():
        dist.barrier()
        dist.destroy_process_group()


def rank_dir(out: Path, resume: bool) -> Path:
    """Where this rank writes its run: ``out`` on rank 0; elsewhere a private scratch directory (a copy of ``out``
    when resuming, so every rank continues from the same stage)."""
    if is_main():
        return out
    scratch = Path(tempfile.mkdtemp(prefix=f"edgecompress-rank{rank()}-")) / "run"
    if resume:
        shutil.copytree(out, scratch)
    return scratch


def discard(run_dir: Path) -> None:
    """Remove a rank's scratch run (:func:`rank_dir`) once the run is over; rank 0's run is kept."""
    if not is_main() and run_dir.name == "run" and run_dir.parent.name.startswith(f"edgecompress-rank{rank()}-"):
        shutil.rmtree(run_dir.parent, ignore_errors=True)


def check_split(samples: int, batch_size: int, where: str) -> None:
    """Refuse a world size the training data cannot be split over: each global batch of ``batch_size`` is cut
    into one equal share per rank, so the world size must divide ``batch_size`` and each rank needs a sample."""
    n = world()
    if n == 1:
        return
    if batch_size % n or samples < n:
        raise EdgeCompressError(
            f"{n} processes cannot split the training data: batch_size {batch_size} is not a multiple of {n}"
            if batch_size % n else f"{n} processes cannot split {samples} training samples", where=where,
            fix=f"run torchrun with --nproc-per-node dividing {batch_size} (e.g. "
                f"{max(d for d in range(1, n + 1) if batch_size % d == 0)}), or set the stage's batch_size to a "
                f"multiple of {n}")


def local_part(tensors: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """This rank's contiguous share of one global batch (every tensor cut the same way; shares differ by at
    most one sample when the batch does not divide), or None on every rank for a last batch smaller than the
    world size (every rank must take the same number of steps)."""
    if world() == 1:
        return tensors
    if len(tensors[0]) < world():
        return None
    return [t.tensor_split(world())[rank()] for t in tensors]


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when a process group is active (rank 0's weights and buffers are
    broadcast to every rank; gradients are averaged), else ``model`` itself."""
    if not active():
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics, which each rank updates from its own share
    of the batches), so all ranks hold the same model after training."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Add each tensor over the ranks, in place (moved to the rank's GPU and back under NCCL)."""
    if not active():
        return
    gpu = dist.get_backend() == "nccl"
    for t in tensors:
        work = t.to(f"cuda:{torch.cuda.current_device()}") if gpu else t
        dist.all_reduce(work)
        if work is not t:
            t.copy_(work)


def from_main(values: list[float]) -> list[float]:
    """Rank 0's ``values`` on every rank (timings differ between ranks; decisions taken on them must not)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.to(f"cuda:{torch.cuda.current_device()}")
    dist.broadcast(t, 0)
    return t.cpu().tolist()


def sum_count(value: float | int) -> float:
    """``value`` added over the ranks (a count or a loss total)."""
    t = torch.tensor([float(value)], dtype=torch.float64)
    all_reduce_sum(t)
    return float(t)


def shard(items: list, what: str = "calibration batches") -> list:
    """This rank's items: ``rank, rank + world, ...`` of ``items`` (all of them in one process)."""
    if world() == 1:
        return items
    mine = items[rank()::world()]
    if not mine:
        raise EdgeCompressError(f"{world()} processes cannot split {len(items)} {what}: rank {rank()} gets none",
                                where="torchrun", fix=f"give the stage at least {world()} {what}, or run fewer "
                                                      "processes")
    return mine


def shard_batches(inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """This rank's calibration inputs: its :func:`shard` of ``inputs.split(batch_size)``, so each batch is computed
    exactly as one process computes it."""
    return inputs if world() == 1 else torch.cat(shard(list(inputs.split(batch_size))))
