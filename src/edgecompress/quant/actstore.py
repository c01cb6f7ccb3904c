"""DQA's real activation storage: n-bit packed integer tensors plus per-channel Huffman-coded residuals.

An important channel is quantized at ``n+m`` bits (``q'``) and stored as ``q = q' >> m`` in the n-bit main
tensor with the residual ``e = q' & (2^m - 1)`` Huffman-coded per channel (canonical codes, so a table of
``2^m`` code lengths per channel describes the tree). Unimportant channels are plain n-bit. Bytes counted:
the packed main tensor, each Huffman stream (rounded up to whole bytes) and each code-length table, plus one
float32 scale per channel.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import torch

from edgecompress.quant.actquant import channel_max, check_bits, step, to_int


def pack(values: np.ndarray, bits: int) -> bytes:
    """Signed integers in ``[-2^(bits-1), 2^(bits-1))`` as ``bits``-bit two's complement, bit-packed."""
    v = values.astype(np.int64).ravel() & ((1 << bits) - 1)
    shifts = np.arange(bits - 1, -1, -1)
    return np.packbits(((v[:, None] >> shifts) & 1).astype(np.uint8)).tobytes()


def unpack(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack` for ``count`` values."""
    b = np.unpackbits(np.frombuffer(data, np.uint8))[: count * bits].reshape(count, bits).astype(np.int64)
    v = (b << np.arange(bits - 1, -1, -1)).sum(axis=1)
    return np.where(v >= 1 << (bits - 1), v - (1 << bits), v)


# ---------------------------------------------------------------- Huffman (canonical codes)


def code_lengths(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """Huffman code length of each symbol in ``range(alphabet)`` (0 for absent ones), built with heapq."""
    counts = np.bincount(symbols, minlength=alphabet)
    heap = [(int(c), s, [s]) for s, c in enumerate(counts) if c > 0]
    lengths = np.zeros(alphabet, np.int64)
    if len(heap) == 1:
        lengths[heap[0][1]] = 1
        return lengths
    heapq.heapify(heap)
    while len(heap) > 1:
        c1, t1, s1 = heapq.heappop(heap)
        c2, t2, s2 = heapq.heappop(heap)
        lengths[s1 + s2] += 1
        heapq.heappush(heap, (c1 + c2, min(t1, t2), s1 + s2))
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes (as integers) for the given lengths: shorter first, then by symbol."""
    codes = np.zeros(len(lengths), np.int64)
    code, prev = 0, 0
    for s in sorted((s for s in range(len(lengths)) if lengths[s]), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        codes[s], prev = code, int(lengths[s])
        code += 1
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """The concatenated codes of ``symbols`` (vectorised), bit-packed; returns (bytes, number of bits)."""
    codes = canonical_codes(lengths)
    ln = lengths[symbols]
    starts = np.concatenate([[0], np.cumsum(ln)[:-1]])
    bits = np.zeros(int(ln.sum()), np.uint8)
    for j in range(int(ln.max(initial=0))):
        has = ln > j
        bits[starts[has] + j] = (codes[symbols[has]] >> (ln[has] - 1 - j)) & 1
    return np.packbits(bits).tobytes(), len(bits)


def decode(data: bytes, nbits: int, lengths: np.ndarray, count: int) -> np.ndarray:
    """Decode ``count`` symbols from a stream written by :func:`encode` with the same code lengths."""
    codes = canonical_codes(lengths)
    table = {(int(lengths[s]), int(codes[s])): s for s in range(len(lengths)) if lengths[s]}
    bits = np.unpackbits(np.frombuffer(data, np.uint8))[:nbits]
    out = np.empty(count, np.int64)
    code = length = n = 0
    for b in bits:
        code, length = (code << 1) | int(b), length + 1
        if (length, code) in table:
            out[n], code, length, n = table[(length, code)], 0, 0, n + 1
    if n != count:
        raise ValueError(f"Huffman stream holds {n} symbols, expected {count}")
    return out


# ---------------------------------------------------------------- one stored activation tensor


@dataclass
class StoredActivation:
    shape: tuple[int, ...]
    bits: int
    extra_bits: int
    important: np.ndarray  # bool per channel
    scales: np.ndarray  # float32 max|x_c| per channel
    main: bytes  # n-bit packed q, channel-major
    streams: dict[int, tuple[bytes, int]]  # channel -> (Huffman stream, number of bits)
    tables: dict[int, np.ndarray]  # channel -> code lengths of the 2^m residual symbols

    def table_bytes(self) -> int:
        width = self.extra_bits  # a length is at most 2^m - 1 (2^m symbols): m bits each
        return len(self.tables) * math.ceil(2**self.extra_bits * width / 8)

    def nbytes(self) -> dict[str, int]:
        parts = {"main": len(self.main), "huffman_stream": sum(len(s) for s, _ in self.streams.values()),
                 "huffman_tables": self.table_bytes(), "scales": 4 * len(self.scales)}
        return parts | {"total": sum(parts.values())}


def store(x: torch.Tensor, bits: int, extra_bits: int, important: torch.Tensor) -> StoredActivation:
    """Quantize ``x`` exactly as :func:`edgecompress.quant.actquant.dqa` does and store it for real."""
    check_bits(bits)
    m = channel_max(x)
    imp = important.view(1, -1, *([1] * (x.dim() - 2)))
    q_lo = to_int(x, step(m, bits), bits)
    q_hi = to_int(x, step(m, bits + extra_bits), bits + extra_bits)
    q = torch.where(imp, q_hi, q_lo).to(torch.int64).transpose(0, 1).reshape(x.shape[1], -1).numpy()
    main, streams, tables = q.copy(), {}, {}
    for c in np.flatnonzero(important.numpy()):
        main[c] = q[c] >> extra_bits
        residual = q[c] & ((1 << extra_bits) - 1)
        tables[int(c)] = code_lengths(residual, 2**extra_bits)
        streams[int(c)] = encode(residual, tables[int(c)])
    return StoredActivation(tuple(x.shape), bits, extra_bits, important.numpy().astype(bool),
                            m.flatten().numpy().astype(np.float32), pack(main, bits), streams, tables)


def load(s: StoredActivation) -> torch.Tensor:
    """Dequantize a stored activation: ``D * q`` for plain channels, ``D' * ((q << m) | e)`` for important ones."""
    c, per = s.shape[1], int(np.prod(s.shape)) // s.shape[1]
    q = unpack(s.main, s.bits, c * per).reshape(c, per)
    for ch, (data, nbits) in s.streams.items():
        q[ch] = (q[ch] << s.extra_bits) | decode(data, nbits, s.tables[ch], per)
    m = torch.from_numpy(s.scales).view(1, -1, *([1] * (len(s.shape) - 2)))
    d = torch.where(torch.from_numpy(s.important).view_as(m), step(m, s.bits + s.extra_bits), step(m, s.bits))
    per_shape = (c, s.shape[0], *s.shape[2:])
    return torch.from_numpy(q).reshape(per_shape).transpose(0, 1).float() * d
