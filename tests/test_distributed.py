"""Data-parallel training and calibration with 2 gloo processes (torch.multiprocessing, one CPU thread each):
training keeps the ranks identical and matches one process; GPTQ calibration split over the ranks equals one
process; a world size the data cannot be split over and a loopback interface that is down are clear errors."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from edgecompress import distributed, zoo
from edgecompress.errors import EdgeCompressError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int, port: int, job, args, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results[rank] = job(*args)
    except EdgeCompressError as err:
        results[rank] = err
    finally:
        dist.destroy_process_group()


def in_processes(job, *args, world: int = 2) -> list:
    """``job(*args)`` in ``world`` gloo processes; each rank's return value (or EdgeCompressError)."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_run, args=(world, _free_port(), job, args, results), nprocs=world)
        return [results[r] for r in range(world)]


def _train_digits(batch_size: int = 64) -> dict:
    from edgecompress.data import data_spec, load_task
    from edgecompress.train import accuracy, train

    task = load_task(data_spec(dataset="digits"))
    torch.manual_seed(0)
    model = zoo.build("mnist_cnn", task.input_shape, task.num_classes, width=0.5)
    history = train(model, task, epochs=3, lr=0.05, batch_size=batch_size, progress=False)
    result = {"state": {k: v.clone() for k, v in model.state_dict().items()},
              "accuracy": accuracy(model, task, "test"), "loss": history[-1]["loss"],
              "from_main": distributed.from_main([float(distributed.rank()), 2.5])}
    try:
        train(model, task, epochs=1, lr=0.05, batch_size=63, progress=False)
    except EdgeCompressError as err:
        result["odd_batch_error"] = str(err)
    return result


@pytest.mark.slow
def test_ddp_training_matches_one_process():
    one = _train_digits()
    a, b = in_processes(_train_digits)
    for key, value in a["state"].items():  # every rank ends with the same weights and buffers
        assert torch.equal(value, b["state"][key]), key
    assert a["loss"] == b["loss"]  # the logged loss is averaged over the ranks
    assert abs(a["accuracy"] - one["accuracy"]) <= 0.02, (a["accuracy"], one["accuracy"])
    assert one["accuracy"] > 0.85
    assert "odd_batch_error" not in one  # one process splits any batch
    assert a["from_main"] == b["from_main"] == [0.0, 2.5]  # rank 0's timings decide on every rank
    # a world size the data cannot be split over is a clear error on every rank
    for rank in (a, b):
        assert "batch_size 63 is not a multiple of 2" in rank["odd_batch_error"]
        assert "--nproc-per-node" in rank["odd_batch_error"]


def _calibrate(model: torch.nn.Module, x: torch.Tensor, h: torch.Tensor) -> tuple[dict, tuple]:
    """GPTQ of ``model`` on ``x`` (the sequential engine shards the batches) and LLM input statistics of ``h``."""
    from edgecompress.llm.criteria import InputStats
    from edgecompress.quant.weights.model import quantize_layers
    from edgecompress.quant.weights.quantizer import QuantSpec

    names = ["features.0", "features.4", "features.8", "features.11", "classifier"]
    quantize_layers(model, {n: QuantSpec(bits=4) for n in names}, x, "gptq")
    stats = InputStats(h.shape[-1], hessian=True)
    for batch in distributed.shard(list(h.split(16))):
        stats.add(batch)
    stats.reduce()
    return {k: v.clone() for k, v in model.state_dict().items()}, (stats.sumsq, stats.xtx, stats.tokens)


@pytest.mark.slow
def test_distributed_calibration_equals_one_process(digits_task, digits_cnn):
    import copy

    x, h = digits_task.calibration(256, seed=0), torch.randn(96, 24)
    one, single = _calibrate(copy.deepcopy(digits_cnn), x, h)
    for state, (sumsq, xtx, tokens) in in_processes(_calibrate, copy.deepcopy(digits_cnn), x, h):
        for key, value in one.items():
            assert torch.allclose(state[key], value, atol=1e-6, rtol=0), key
        assert tokens == single[2] == 96
        assert torch.allclose(sumsq, single[0], rtol=1e-12) and torch.allclose(xtx, single[1], rtol=1e-12)


def test_loopback_down_is_a_clear_error(tmp_path, monkeypatch):
    flags = tmp_path / "flags"
    flags.write_text("0x8\n")  # IFF_LOOPBACK without IFF_UP
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(EdgeCompressError, match="ip link set lo up"):
        distributed.check_loopback(flags)
    flags.write_text("0x9\n")
    distributed.check_loopback(flags)


def test_one_process_helpers_are_identities():
    x = torch.arange(10.0)
    assert distributed.world() == 1 and distributed.is_main()
    assert distributed.shard_batches(x, 4) is x and distributed.local_part([x]) == [x]
    assert distributed.sum_count(3) == 3.0


def test_only_rank_0_writes_the_run_directory(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert distributed.rank_dir(out, resume=False) == out  # rank 0 (and one process): the user's directory
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    scratch = distributed.rank_dir(out, resume=False)
    assert tmp_path not in scratch.parents and not scratch.exists()
    distributed.discard(scratch)
    assert not scratch.parent.exists()
    out.mkdir()
    (out / "state.json").write_text("{}")
    resumed = distributed.rank_dir(out, resume=True)  # a resumed rank continues from a copy of rank 0's run
    assert (resumed / "state.json").read_text() == "{}" and resumed != out
    distributed.discard(resumed)
    assert not resumed.parent.exists() and (out / "state.json").exists()
    distributed.discard(out)  # never the user's directory
    assert out.exists()
