"""Activation quantization at block outputs: the quantizers (pure functions), the module that applies one to a
block's output, helpers to run a model from a block onwards, and the baseline stage ``quant.act``.

Every quantizer is per-channel and symmetric with a *dynamic* scale ``max|x_c|`` taken over the current batch
(all dimensions but the channel dimension 1), as in DQA's code. The result is *simulated* quantization: the
tensor is rounded to the integer grid and returned dequantized in float, on the fly in PyTorch. No runtime we
ship executes 3-6-bit activations, so accuracy is measured in PyTorch; ``quant.dqa`` additionally stores the
bit-exact integer tensors and counts their bytes (``edgecompress.quant.actstore``).
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Literal

import torch
from pydantic import Field
from torch import fx, nn

from edgecompress.calibration import MIN_CALIB_SAMPLES, calibration_samples
from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.nn.capture import capture
from edgecompress.registry import StageConfig, register

MIN_BITS, MAX_BITS = 3, 8
SUFFIX_ROWS = 512  # samples per batched suffix pass (ranking and search candidates share a pass)
BLOCK_TYPES = ("BasicBlock", "Bottleneck", "InvertedResidual")  # residual blocks found automatically
Quantizer = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- quantizers (pure functions)


def check_bits(bits: int, where: str = "bits") -> int:
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise EdgeCompressError(f"activation bit width {bits!r} is outside the supported {MIN_BITS}-{MAX_BITS}",
                                where=where, fix=f"choose an integer from {MIN_BITS} to {MAX_BITS}")
    return bits


def channel_max(x: torch.Tensor) -> torch.Tensor:
    """``max|x_c|`` over the batch and all non-channel dims, shaped to broadcast against ``x``."""
    dims = [d for d in range(x.dim()) if d != 1]
    return x.abs().amax(dim=dims, keepdim=True)


def step(max_abs: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric step ``D = max / 2^(bits-1)`` (1 where a channel is all zero, so it stays zero)."""
    return torch.where(max_abs > 0, max_abs / 2 ** (bits - 1), torch.ones_like(max_abs))


def to_int(x: torch.Tensor, d: torch.Tensor, bits: int) -> torch.Tensor:
    """``clamp(round(x / D), -2^(bits-1), 2^(bits-1) - 1)`` as float integers."""
    return torch.clamp(torch.round(x / d), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def uniform(x: torch.Tensor, bits: int, clip: torch.Tensor | None = None) -> torch.Tensor:
    """Direct per-channel uniform quantization; ``clip`` (per channel, <= 1) scales the range ``max|x_c|``."""
    check_bits(bits)
    m = channel_max(x)
    d = step(m if clip is None else m * _per_channel(clip, x), bits)
    return to_int(x, d, bits) * d


def pow2(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Power-of-two (log) quantization: ``sign(x) * max|x_c| * 2^-k``, ``k = round(log2(max / |x|))``.

    One bit is the sign and the other ``bits-1`` code the exponents ``k = 0 .. 2^(bits-1) - 2`` plus zero:
    a value whose ``k`` falls past the last exponent becomes 0.
    """
    check_bits(bits)
    m = channel_max(x)
    levels = 2 ** (bits - 1) - 1
    ratio = x.abs() / torch.where(m > 0, m, torch.ones_like(m))
    k = torch.round(-torch.log2(ratio.clamp_min(torch.finfo(x.dtype).tiny)))
    k = k.clamp_min(0)
    return torch.where(k < levels, torch.sign(x) * m * torch.exp2(-k), torch.zeros_like(x))


def noisy(x: torch.Tensor, bits: int, clip: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """NoisyQuant: ``Q(x + N) - N`` with a fixed noisy bias ``N = noise * D`` (``noise`` in units of the step,
    one value per channel and position) and a clipped range ``clip_c * max|x_c|``."""
    check_bits(bits)
    d = step(channel_max(x) * _per_channel(clip, x), bits)
    n = noise.to(x.dtype) * d
    return to_int(x + n, d, bits) * d - n


def dqa(x: torch.Tensor, bits: int, extra_bits: int, important: torch.Tensor) -> torch.Tensor:
    """DQA: important channels at ``bits + extra_bits`` (``D' = max / 2^(n+m-1)``), the others at ``bits``."""
    check_bits(bits)
    m = channel_max(x)
    lo = to_int(x, step(m, bits), bits) * step(m, bits)
    hi = to_int(x, step(m, bits + extra_bits), bits + extra_bits) * step(m, bits + extra_bits)
    return torch.where(_per_channel(important, x), hi, lo)


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (x.dim() - 2)))


# ---------------------------------------------------------------- installing quantizers


class QuantizedOutput(nn.Module):
    """Wraps a block; its output passes through ``quantizer`` (``None``: float). Simulated, on the fly."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.quantizer: Quantizer | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y if self.quantizer is None else self.quantizer(y)


def find_blocks(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """The named modules (default: every residual block — BasicBlock, Bottleneck, InvertedResidual), in order."""
    modules = dict(model.named_modules())
    if names:
        missing = [n for n in names if n not in modules or n == ""]
        if missing:
            raise EdgeCompressError(f"no module named {missing}", where="layers",
                                    fix="use names from model.named_modules()")
        return list(names)
    found = [n for n, m in modules.items() if type(m).__name__ in BLOCK_TYPES]
    if not found:
        raise EdgeCompressError(f"the model has no residual block ({', '.join(BLOCK_TYPES)})", where="layers",
                                fix="list the modules whose outputs to quantize in `layers`")
    return found


def install(model: nn.Module, names: list[str]) -> list[QuantizedOutput]:
    """Replace each named module of ``model`` (in place) by a ``QuantizedOutput`` wrapping it."""
    wrappers = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrapper = QuantizedOutput(getattr(parent, child))
        setattr(parent, child, wrapper)
        wrappers.append(wrapper)
    return wrappers


def block_output(model: nn.Module, wrapper: QuantizedOutput, x: torch.Tensor) -> torch.Tensor:
    """The float output of ``wrapper``'s block on ``x`` (earlier quantizers active); later layers are skipped."""
    return capture(model, wrapper.block, x, "output")


class Suffix:
    """Runs ``model`` from a wrapper's output onwards (torch.fx graph with the wrappers as leaves, started with
    the wrapper's value in the environment). Models fx cannot trace fall back to a full forward pass with
    the wrapper's output replaced, which is correct but recomputes the layers before it."""

    def __init__(self, model: nn.Module, wrappers: list[QuantizedOutput]):
        self.model = model
        names = {id(w): n for n, w in model.named_modules() if isinstance(w, QuantizedOutput)}
        self.names = [names[id(w)] for w in wrappers]

        class Tracer(fx.Tracer):
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                return isinstance(m, QuantizedOutput) or super().is_leaf_module(m, qualname)

        try:
            graph = Tracer().trace(model)
            self.gm: fx.GraphModule | None = fx.GraphModule(model, graph)
            self.nodes = list(graph.nodes)
            self.index = {n.target: i for i, n in enumerate(self.nodes) if n.op == "call_module"}
        except Exception:  # noqa: BLE001  (any tracing failure: use the slow path)
            self.gm = None

    def __call__(self, wrapper_index: int, value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        name = self.names[wrapper_index]
        if self.gm is not None:
            i = self.index[name]
            env = {n: None for n in self.nodes[:i]} | {self.nodes[i]: value}
            return fx.Interpreter(self.gm).run(x, initial_env=env)
        wrapper = self.model.get_submodule(name)
        saved, wrapper.quantizer = wrapper.quantizer, (lambda _y: value)
        try:
            return self.model(x)
        finally:
            wrapper.quantizer = saved

    def many(self, wrapper_index: int, values: Iterable[torch.Tensor], x: torch.Tensor,
             rows: int = SUFFIX_ROWS) -> Iterator[torch.Tensor]:
        """The logits for each candidate value of the wrapper's output, in order, ``rows // len(x)``
        candidates per pass: their values (and copies of ``x``) are concatenated along the batch.

        Exact when the suffix treats samples independently (eval mode, later quantizers off — as in the
        ranking and the NoisyQuant search, where later blocks are float); the tests check that the scores
        are bit-identical to one pass per candidate on our CPU kernels.
        """
        per_pass = max(1, rows // len(x))
        values = iter(values)
        while chunk := list(itertools.islice(values, per_pass)):
            logits = self(wrapper_index, torch.cat(chunk), x.repeat(len(chunk), *[1] * (x.dim() - 1)))
            yield from logits.split(len(x))


# ---------------------------------------------------------------- NoisyQuant search and the baseline stage

CANDIDATES = 100


def noisyquant_search(model: nn.Module, wrappers: list[QuantizedOutput], bits: int, calib: torch.Tensor,
                      seed: int = 0, rows: int = SUFFIX_ROWS) -> list[dict]:
    """Calibrate NoisyQuant block by block (earlier blocks already quantized, later ones float).

    Per block: 100 clip candidates (the ``p``-th percentile of ``|x_c|`` relative to ``max|x_c|``, ``p`` from
    90 to 100), then 100 noise amplitudes ``K`` from 0 to 1 step (a fixed uniform ``U(-K/2, K/2)`` noise map),
    each scored by the MSE of the *model output* (logits) against the float model on the calibration set.
    "Output MSE" read as the model's output is our choice [design]: it costs one pass of the rest of the
    network per candidate (200 per block); a block-local MSE would be far cheaper and less accurate.
    Candidates share batched suffix passes of ``rows`` samples (``Suffix.many``; same result as one each).
    """
    suffix = Suffix(model, wrappers)
    with torch.no_grad():
        reference = model(calib)
        gen = torch.Generator().manual_seed(seed)
        chosen = []
        for i, w in enumerate(wrappers):
            y = block_output(model, w, calib)
            flat = y.transpose(0, 1).reshape(y.shape[1], -1).abs()
            top = flat.amax(dim=1).clamp_min(1e-12)
            pcts = torch.linspace(0.90, 1.0, CANDIDATES)
            if flat.numel() > 2**24:  # torch.quantile's size limit: a random subset of positions
                flat = flat[:, torch.randperm(flat.shape[1], generator=gen)[: 2**24 // flat.shape[0]]]
            quantiles = torch.quantile(flat, pcts, dim=1)
            zero_noise = torch.zeros(y.shape[1:])

            def best(quantizers: list[Quantizer], i: int = i, y: torch.Tensor = y) -> int:
                logits = suffix.many(i, (q(y) for q in quantizers), calib, rows)
                scores = [torch.mean((out - reference) ** 2).item() for out in logits]
                return scores.index(min(scores))  # the first best, as min() over the candidates

            clips = [quantiles[j] / top for j in range(CANDIDATES)]
            best_clip = clips[best([partial(noisy, bits=bits, clip=c, noise=zero_noise) for c in clips])]
            u = torch.rand(y.shape[1:], generator=gen) - 0.5
            amps = torch.linspace(0.0, 1.0, CANDIDATES)
            best_k = amps[best([partial(noisy, bits=bits, clip=best_clip, noise=u * k) for k in amps])]
            w.quantizer = partial(noisy, bits=bits, clip=best_clip, noise=u * best_k)
            chosen.append({"clip_mean": round(best_clip.mean().item(), 4), "noise_amplitude": round(best_k.item(), 3)})
    return chosen


class ActConfig(StageConfig):
    """Settings of ``quant.act``."""

    method: Literal["uniform", "pow2", "noisyquant"] = Field("uniform", description=(
        "uniform: direct per-channel; pow2: power-of-two (log) levels; noisyquant: clip + noisy-bias search"))
    bits: int = Field(4, ge=MIN_BITS, le=MAX_BITS, description="activation bits")
    layers: list[str] = Field([], max_length=10_000, description=(
        "modules whose outputs are quantized (default: every residual block)"))
    calib_samples: int = Field(256, ge=MIN_CALIB_SAMPLES, le=100_000, description="calibration inputs (noisyquant only)")


@register("quant.act", ActConfig)
def act(model: nn.Module, config: ActConfig, ctx: StageContext) -> nn.Module:
    """Activation quantization baselines at block outputs: direct uniform, power-of-two, or NoisyQuant.

    Simulated on-the-fly per-channel quantization with a dynamic per-batch scale, measured in PyTorch (no
    runtime runs 3-6-bit activations); the returned model carries the quantizers.
    """
    model = copy.deepcopy(model).eval()
    wrappers = install(model, find_blocks(model, config.layers))
    start, cpu = time.perf_counter(), time.process_time()
    details: list[dict] = []
    if config.method == "noisyquant":
        calib = calibration_samples(ctx, config.calib_samples, "quant.act")
        details = noisyquant_search(model, wrappers, config.bits, calib, ctx.seed)
    else:
        fn = uniform if config.method == "uniform" else pow2
        for w in wrappers:
            w.quantizer = partial(fn, bits=config.bits)
    ctx.info.update(method=config.method, bits=config.bits, blocks=len(wrappers), search=details,
                    quantization_seconds=round(time.perf_counter() - start, 3),
                    quantization_cpu_seconds=round(time.process_time() - cpu, 3),
                    note="simulated activation quantization, measured in PyTorch")
    return model
