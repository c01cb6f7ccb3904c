"""``quant.dqa``: DQA / eDQA deep (3-8 bit) activation quantization of block outputs (Hu & Cano, arXiv:2412.09687).

Offline, once: a greedy channel ranking per block. For block k and each of its channels c, channel c stays
FP32 while the block's other channels and every earlier block are quantized at 3 bits (later blocks float);
the calibration set is run and the channels ranked by the resulting accuracy (ties broken by the logits' MSE
against the float model). Cost: the sum of the blocks' channel counts in evaluations of the calibration set,
each from block k onwards only (torch.fx, see ``actquant.Suffix``), several candidates batched per pass (exact). ``ranking: mse`` ranks by the logits' MSE alone
(label-free, same cost); ``ranking_samples`` ranks on a calibration subset — both are shortcuts we offer, the
paper ranks by accuracy on the calibration set.

Online: the top ``important_share`` channels of each block are quantized at n+m bits and the rest at n bits,
per channel with a dynamic scale ``max|x_c|`` per batch (see ``actquant.dqa``). The real storage — n-bit packed
main tensor plus per-channel Huffman-coded m-bit residuals and their code tables — is in ``actstore``; the
stage measures its bytes on calibration activations and checks that decoding restores them exactly.

The returned model is PyTorch with the quantizers installed: simulated on-the-fly activation quantization,
measured in PyTorch, since no runtime we ship runs 3-bit activations. The stored tensors and their byte
counts are real. Checkpoints keep the float weights only (a reloaded model has no quantizers).
"""

from __future__ import annotations

import copy
import math
import time
from functools import partial
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from edgecompress.calibration import MIN_CALIB_SAMPLES, calibration_samples
from edgecompress.context import StageContext
from edgecompress.quant.actquant import (
    MAX_BITS,
    MIN_BITS,
    SUFFIX_ROWS,
    QuantizedOutput,
    Suffix,
    block_output,
    dqa,
    find_blocks,
    install,
    uniform,
)
from edgecompress.quant.actstore import load, store
from edgecompress.registry import StageConfig, register

RANK_BITS = 3  # the paper ranks with the other channels at 3 bits


class DQAConfig(StageConfig):
    """Settings of ``quant.dqa``."""

    bits: int = Field(4, ge=MIN_BITS, le=MAX_BITS, description="n: bits of the stored activation tensor")
    extra_bits: int = Field(3, ge=1, le=8, description="m: extra bits of important channels (Huffman-coded)")
    important_share: float = Field(0.4, ge=0, le=1, description="share of each block's channels ranked important")
    calib_samples: int = Field(256, ge=MIN_CALIB_SAMPLES, le=100_000, description="labeled training inputs for ranking")
    ranking: Literal["accuracy", "mse"] = Field("accuracy", description=(
        "accuracy: calibration accuracy (paper); mse: logits' MSE against the float model (label-free shortcut)"))
    ranking_samples: int = Field(0, ge=0, le=100_000, description=(
        "rank on this many of the calibration samples (shortcut; 0: all)"))
    storage_samples: int = Field(16, ge=1, le=10_000, description="calibration inputs whose stored bytes are measured")
    layers: list[str] = Field([], max_length=10_000, description="modules whose outputs are quantized "
                                                                 "(default: every residual block)")

    def labels_needed(self) -> str | None:
        return "ranking: accuracy ranks channels by labelled accuracy; ranking: mse needs no labels" \
            if self.ranking == "accuracy" else None



def rank_channels(model: nn.Module, wrappers: list[QuantizedOutput], x: torch.Tensor, y: torch.Tensor | None,
                  criterion: str, rank_bits: int = RANK_BITS, rows: int = SUFFIX_ROWS) -> list[list[int]]:
    """Per block, its channels from most to least important (earlier blocks left at ``rank_bits`` afterwards).

    The candidates (one restored channel each) share batched suffix passes of ``rows`` samples
    (``Suffix.many``): the same scores as one pass per channel, fewer and larger passes.
    """
    suffix = Suffix(model, wrappers)
    for w in wrappers:
        w.quantizer = None
    orders = []
    with torch.no_grad():
        reference = model(x)
        for i, w in enumerate(wrappers):
            out = block_output(model, w, x)
            q = uniform(out, rank_bits)
            logits = suffix.many(i, (_restore(q, out, c) for c in range(out.shape[1])), x, rows)
            scores = []
            for c, lg in enumerate(logits):
                mse = torch.mean((lg - reference) ** 2).item()
                acc = (lg.argmax(1) == y).float().mean().item() if criterion == "accuracy" else 0.0
                scores.append((-acc, mse, c))
            orders.append([c for *_, c in sorted(scores)])
            w.quantizer = partial(uniform, bits=rank_bits)
    return orders


def _restore(q: torch.Tensor, out: torch.Tensor, c: int) -> torch.Tensor:
    """``q`` with channel ``c`` put back to its float value ``out[:, c]``."""
    z = q.clone()
    z[:, c] = out[:, c]
    return z


def set_dqa(wrappers: list[QuantizedOutput], orders: list[list[int]], bits: int, extra_bits: int,
            share: float) -> None:
    """Install DQA quantizers: the first ``ceil(share * C)`` channels of each order are important."""
    for w, order in zip(wrappers, orders, strict=True):
        important = torch.zeros(len(order), dtype=torch.bool)
        important[order[: math.ceil(share * len(order))]] = True
        w.quantizer = partial(dqa, bits=bits, extra_bits=extra_bits, important=important)


def storage_report(model: nn.Module, wrappers: list[QuantizedOutput], x: torch.Tensor) -> dict:
    """Stored bytes of every block output on ``x`` (one batch), and whether decoding the first is exact."""
    totals: dict[str, int] = {}
    elements, exact = 0, None
    with torch.no_grad():
        for w in wrappers:
            out = block_output(model, w, x)
            kw = w.quantizer.keywords
            s = store(out, kw["bits"], kw["extra_bits"], kw["important"])
            if exact is None:
                exact = bool(torch.equal(load(s), dqa(out, **kw)))
            for k, v in s.nbytes().items():
                totals[k] = totals.get(k, 0) + v
            elements += out.numel()
    bits = wrappers[0].quantizer.keywords["bits"]
    per = totals["total"] / elements
    return {"bytes": totals, "activations": elements, "bytes_per_activation": round(per, 4),
            "vs_fp32": round(per / 4, 4), "vs_plain_nbit": round(per / (bits / 8), 4),
            "huffman_overhead_bytes": totals["huffman_stream"] + totals["huffman_tables"],
            "roundtrip_exact": exact}


@register("quant.dqa", DQAConfig)
def dqa_stage(model: nn.Module, config: DQAConfig, ctx: StageContext) -> nn.Module:
    """DQA deep activation quantization: per block, the top-ranked channels get n+m bits (residual Huffman-coded).

    Simulated on-the-fly activation quantization measured in PyTorch; the bit-exact stored tensors (n-bit
    packed + Huffman stream + tables) and their bytes are real and reported in ``ctx.info``.
    """
    model = copy.deepcopy(model).eval()
    names = find_blocks(model, config.layers)
    wrappers = install(model, names)
    if config.ranking == "accuracy":
        x, y = calibration_samples(ctx, config.calib_samples, "quant.dqa", labels=True)
    else:
        x, y = calibration_samples(ctx, config.calib_samples, "quant.dqa"), None
    n_rank = config.ranking_samples or len(x)
    start, cpu = time.perf_counter(), time.process_time()
    orders = rank_channels(model, wrappers, x[:n_rank], None if y is None else y[:n_rank], config.ranking)
    set_dqa(wrappers, orders, config.bits, config.extra_bits, config.important_share)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    ctx.info.update(
        bits=config.bits, extra_bits=config.extra_bits, important_share=config.important_share,
        ranking=config.ranking, ranking_samples=n_rank, blocks=len(wrappers),
        ranking_passes=sum(len(o) for o in orders), quantization_seconds=round(seconds, 3),
        quantization_cpu_seconds=round(cpu_seconds, 3), important_channels={
            name: o[: math.ceil(config.important_share * len(o))] for name, o in zip(names, orders, strict=True)},
        storage=storage_report(model, wrappers, x[: config.storage_samples]),
        note="simulated activation quantization measured in PyTorch; stored bytes are real",
    )
    return model
