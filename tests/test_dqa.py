"""quant.dqa and quant.act: Huffman round trip, n+m-bit precision, packed sizes, baseline formulas, bad input."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from edgecompress import zoo
from edgecompress.context import StageContext
from edgecompress.tasks import ClassificationTask
from edgecompress.errors import EdgeCompressError
from edgecompress.quant import actstore
from edgecompress.quant.actquant import QuantizedOutput, noisy, pow2, uniform
from edgecompress.quant.actquant import dqa as dqa_fn
from edgecompress.registry import get


def test_huffman_round_trip_is_exact():
    rng = np.random.default_rng(0)
    symbols = rng.choice(8, size=5000, p=[0.5, 0.2, 0.1, 0.08, 0.06, 0.03, 0.02, 0.01])
    lengths = actstore.code_lengths(symbols, 8)
    data, nbits = actstore.encode(symbols, lengths)
    assert np.array_equal(actstore.decode(data, nbits, lengths, len(symbols)), symbols)
    assert nbits == int(lengths[symbols].sum()) and len(data) == math.ceil(nbits / 8)
    assert nbits < 3 * len(symbols)  # skewed residuals compress below m = 3 bits each
    one = np.full(10, 5)  # a single symbol still gets a 1-bit code
    assert np.array_equal(actstore.decode(*actstore.encode(one, actstore.code_lengths(one, 8)),
                                          actstore.code_lengths(one, 8), 10), one)


@pytest.mark.parametrize("bits", [3, 5, 8])
def test_pack_sizes_match_bit_arithmetic(bits):
    v = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1)).repeat(3)
    data = actstore.pack(v, bits)
    assert len(data) == math.ceil(len(v) * bits / 8)
    assert np.array_equal(actstore.unpack(data, bits, len(v)), v)


def test_important_channels_get_n_plus_m_bit_precision_and_storage_round_trips():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 5)
    important = torch.tensor([True, False, True, False, False, True])
    n, m = 3, 3
    y = dqa_fn(x, n, m, important)
    mx = x.abs().amax(dim=(0, 2, 3))
    err = (y - x).abs().amax(dim=(0, 2, 3))
    d, d_fine = mx / 2 ** (n - 1), mx / 2 ** (n + m - 1)
    # the largest value may clamp to the top level: allow one step at the channel maximum
    inner = (x.abs() < mx.view(1, -1, 1, 1) * (1 - 2 ** -(n + m - 1))) & important.view(1, -1, 1, 1)
    assert ((y - x).abs()[inner] <= (d_fine.view(1, -1, 1, 1).expand_as(x)[inner] / 2 + 1e-6)).all()
    assert (err[important] <= d_fine[important] + 1e-6).all() and (err[~important] <= d[~important] + 1e-6).all()
    assert err[~important].min() > d_fine.max()  # unimportant channels really are coarser
    stored = actstore.store(x, n, m, important)
    assert torch.equal(actstore.load(stored), y)
    sizes = stored.nbytes()
    assert sizes["main"] == math.ceil(x.numel() * n / 8)
    per = x.numel() // 6
    assert sizes["huffman_stream"] == sum(math.ceil(nb / 8) for _, nb in stored.streams.values())
    assert all(nb <= per * (2**m - 1) for _, nb in stored.streams.values())
    assert sizes["huffman_tables"] == 3 * math.ceil(2**m * m / 8) and sizes["scales"] == 4 * 6


def test_uniform_matches_formula():
    x = torch.tensor([[1.0, -0.3, 0.49, -1.0], [0.0, 0.0, 0.0, 0.0]]).view(1, 2, 4)
    # channel 0: max 1, 3 bits -> D = 0.25, q = clamp(round(x / D), -4, 3)
    expected = torch.tensor([[3, -1, 2, -4], [0, 0, 0, 0]]).float().view(1, 2, 4) * torch.tensor([0.25, 1.0]).view(1, 2, 1)
    assert torch.allclose(uniform(x, 3), expected)


def test_pow2_matches_formula():
    x = torch.tensor([1.0, -0.5, 0.3, 0.1, 0.01, 0.0]).view(1, 1, 6)
    # 3 bits: levels max * 2^-k for k = 0..2; 0.3 -> k = round(1.74) = 2 -> 0.25; 0.1 -> k = 3 -> 0
    assert torch.allclose(pow2(x, 3), torch.tensor([1.0, -0.5, 0.25, 0.0, 0.0, 0.0]).view(1, 1, 6))
    assert torch.allclose(pow2(x, 4)[0, 0, 3], torch.tensor(0.125))  # 4 bits: k up to 6


def test_noisyquant_matches_formula():
    x = torch.tensor([0.9, -0.35, 0.1, -1.0]).view(1, 1, 4)
    noise = torch.tensor([0.4, -0.2, 0.0, 0.3]).view(1, 4)
    clip = torch.tensor([0.5])
    d = 0.5 / 4  # 3 bits, range clipped to 0.5
    n = noise.view(1, 1, 4) * d
    expected = torch.clamp(torch.round((x + n) / d), -4, 3) * d - n
    assert torch.allclose(noisy(x, 3, clip, noise), expected)
    assert torch.allclose(noisy(x, 3, torch.ones(1), torch.zeros(1, 4)), uniform(x, 3))


@pytest.mark.parametrize("bits", [2, 9])
def test_bits_out_of_range_are_clear_errors(bits):
    with pytest.raises(EdgeCompressError, match="outside the supported 3-8"):
        uniform(torch.ones(1, 2, 3), bits)
    with pytest.raises(ValidationError, match="bits"):
        get("quant.dqa").config(bits=bits)
    with pytest.raises(ValidationError, match="bits"):
        get("quant.act").config(bits=bits)


def test_calibration_set_too_small(digits_task):
    x, y = digits_task.train.tensors
    tiny = ClassificationTask("tiny", torch.utils.data.TensorDataset(x[:5], y[:5]), digits_task.val, digits_task.test,
                digits_task.input_shape, 10)
    model = zoo.build("resnet20", digits_task.input_shape, 10, width=0.25)
    stage = get("quant.dqa")
    with pytest.raises(EdgeCompressError, match="calibration samples"):
        stage(model, stage.config(), StageContext(task=tiny, progress=False))
    small = ClassificationTask("small", torch.utils.data.TensorDataset(x[:40], y[:40]), digits_task.val, digits_task.test,
                 digits_task.input_shape, 10)
    with pytest.warns(UserWarning, match="calib_samples=256"):
        stage(model, stage.config(ranking_samples=16), StageContext(task=small, progress=False))


def test_dqa_stage_end_to_end(digits_task):
    from edgecompress.train import accuracy, train

    torch.manual_seed(0)
    model = zoo.build("resnet20", digits_task.input_shape, 10, width=0.25)
    train(model, digits_task, epochs=2, lr=0.05, progress=False)
    model.eval()
    stage = get("quant.dqa")
    ctx = StageContext(task=digits_task, progress=False)
    quantized = stage(model, stage.config(bits=3, calib_samples=64), ctx)
    wrappers = [m for m in quantized.modules() if isinstance(m, QuantizedOutput)]
    assert len(wrappers) == 9 and not any(isinstance(m, QuantizedOutput) for m in model.modules())
    assert ctx.info["ranking_passes"] == 3 * 4 + 3 * 8 + 3 * 16  # sum of channel counts (width 0.25)
    shares = [w.quantizer.keywords["important"].float().mean().item() for w in wrappers]
    assert all(0.4 <= s <= 0.5 for s in shares)
    storage = ctx.info["storage"]
    assert storage["roundtrip_exact"] and 3 / 8 < storage["bytes_per_activation"] < 4 * 0.25
    assert accuracy(quantized, digits_task, "test") > 0.5  # quantized, still a working classifier


@pytest.mark.parametrize("arch,kw", [("resnet20", {"width": 0.25}),
                                     pytest.param("mobilenet_v2", {"width_mult": 0.25}, marks=pytest.mark.slow)])
def test_batched_suffix_passes_give_identical_ranking_and_search(digits_task, arch, kw):
    from edgecompress.quant.actquant import find_blocks, install, noisyquant_search
    from edgecompress.quant.dqa import rank_channels

    torch.manual_seed(0)
    model = zoo.build(arch, digits_task.input_shape, 10, **kw).eval()  # untrained: ties broken by the MSE
    x, y = digits_task.train.tensors[0][:16].float(), digits_task.train.tensors[1][:16]
    runs = []
    for rows in (16, 48):  # one candidate per pass (as before batching), 3 per pass (and a remainder)
        ranked, searched = copy.deepcopy(model), copy.deepcopy(model)
        orders = rank_channels(ranked, install(ranked, find_blocks(ranked)), x, y, "accuracy", rows=rows)
        blocks = find_blocks(searched)
        wrappers = install(searched, [blocks[0], blocks[len(blocks) // 2], blocks[-1]])  # 3 blocks: keep it short
        noisyquant_search(searched, wrappers, 3, x, rows=rows)
        runs.append((orders, [w.quantizer.keywords for w in wrappers]))
    (orders, chosen), *others = runs
    for other_orders, other_chosen in others:
        assert other_orders == orders
        assert all(torch.equal(a["clip"], b["clip"]) and torch.equal(a["noise"], b["noise"])
                   for a, b in zip(chosen, other_chosen, strict=True))
