"""``kws``: a keyword-spotting dataset synthesized offline with espeak-ng, as log-mel features.

Each utterance is one word spoken by espeak-ng in one of its English accents and voice variants at a random speed
and pitch, resampled to 16 kHz (scipy), placed at a random offset in a 1 s clip and mixed with white, pink or
brown noise at a random SNR (synthetic noise, not recorded background). Classes: the command words, ``_unknown_``
(other words) and ``_silence_`` (noise alone). Voices (accent + variant) are dealt to train / val / test, so the
model is judged on voices it never heard. Features: 25 ms Hann windows every 10 or 20 ms (torch.stft), a triangular
mel filterbank, log, normalized by the training mean and std. The mel filterbank is written here because
torchaudio does not install beside this torch. Built once per option set and cached under $EDGECOMPRESS_CACHE/kws.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.signal import resample_poly

from edgecompress import atomic
from edgecompress.data.datasets import _task, register_dataset
from edgecompress.data.options import KwsData
from edgecompress.errors import EdgeCompressError
from edgecompress.tasks import Task

RATE, WINDOW, N_FFT = 16_000, 400, 512
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
VERSION = 1  # bump when the synthesis or the features change (a new cache key)


def classes(spec: KwsData) -> list[str]:
    return [*spec.words, *([UNKNOWN] if spec.unknown_words else []), *([SILENCE] if spec.silence else [])]


def espeak() -> str:
    """The espeak-ng executable, or a clear error saying how to install it."""
    found = shutil.which("espeak-ng")
    if found is None:
        raise EdgeCompressError("the kws dataset synthesizes speech with espeak-ng, which is not installed",
                                where="data.dataset: kws", fix="install it: apt-get install -y espeak-ng (Debian/Ubuntu)")
    return found


def speak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """One word spoken by espeak-ng, as float32 samples at 16 kHz."""
    out = subprocess.run([espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
                         capture_output=True, timeout=60, check=False)
    if out.returncode or not out.stdout:
        raise EdgeCompressError(f"espeak-ng failed on {word!r} with voice {voice!r}: {out.stderr.decode()[:200]}",
                                where="data.dataset: kws", fix="check the espeak-ng installation (espeak-ng --voices)")
    with wave.open(io.BytesIO(out.stdout)) as w:
        rate, raw = w.getframerate(), w.readframes(w.getnframes())
    audio = np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768
    g = np.gcd(RATE, rate)
    return resample_poly(audio, RATE // g, rate // g).astype(np.float32)


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2) noise of unit RMS."""
    color = rng.integers(3)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    spectrum *= f ** (-0.5 * color)
    noise = np.fft.irfft(spectrum, n)
    return (noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)).astype(np.float32)


def _clip(speech: np.ndarray | None, spec: KwsData, rng: np.random.Generator) -> np.ndarray:
    """A 1 s clip: the trimmed word at a random offset and level, plus noise at a random SNR (silence: noise only)."""
    clip = np.zeros(RATE, dtype=np.float32)
    if speech is not None:
        loud = np.flatnonzero(np.abs(speech) > 0.02 * np.abs(speech).max())
        word = speech[loud[0]:loud[-1] + 1][:RATE] if loud.size else speech[:RATE]
        start = int(rng.integers(RATE - len(word) + 1))
        clip[start:start + len(word)] = word / (np.abs(word).max() + 1e-9) * rng.uniform(0.3, 1.0)
        level = np.sqrt(np.mean(clip[start:start + len(word)] ** 2)) * 10 ** (-rng.uniform(*spec.snr_db) / 20)
    else:
        level = 10 ** rng.uniform(-3, -1.3)
    return clip + level * _noise(RATE, rng)


def mel_filterbank(bins: int, n_fft: int = N_FFT, rate: int = RATE, low: float = 20.0) -> torch.Tensor:
    """[bins, n_fft // 2 + 1] triangular filters evenly spaced on the HTK mel scale from ``low`` to Nyquist."""
    mel = lambda hz: 2595 * np.log10(1 + hz / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = hz(np.linspace(mel(low), mel(rate / 2), bins + 2))
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    rising = (freqs[None] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    falling = (edges[2:, None] - freqs[None]) / (edges[2:, None] - edges[1:-1, None])
    return torch.tensor(np.maximum(0, np.minimum(rising, falling)), dtype=torch.float32)


def log_mel(audio: torch.Tensor, bins: int, hop_ms: int) -> torch.Tensor:
    """[N, samples] at 16 kHz -> [N, 1, frames, bins] log-mel energies (25 ms windows every ``hop_ms``)."""
    spec = torch.stft(audio, N_FFT, RATE * hop_ms // 1000, WINDOW, torch.hann_window(WINDOW), center=False, return_complex=True)
    power = spec.abs() ** 2  # [N, freqs, frames]
    return torch.log(mel_filterbank(bins) @ power + 1e-6).transpose(1, 2).unsqueeze(1)


def _plan(spec: KwsData) -> list[tuple[int, str | None, str, int, int, int]]:
    """(label, word or None for silence, voice, speed, pitch, split) for every utterance, from ``spec.seed``."""
    rng = np.random.default_rng(spec.seed)
    voices = [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]
    order = rng.permutation(len(voices))
    n_test, n_val = max(1, round(spec.test_fraction * len(voices))), max(1, round(spec.val_fraction * len(voices)))
    split_of = {voices[i]: 2 if k < n_test else 1 if k < n_test + n_val else 0 for k, i in enumerate(order)}
    plan = []
    for label, name in enumerate(classes(spec)):
        for _ in range(spec.samples_per_class):
            voice = voices[rng.integers(len(voices))]
            word = None if name == SILENCE else str(rng.choice(spec.unknown_words)) if name == UNKNOWN else name
            plan.append((label, word, voice, int(rng.integers(110, 221)), int(rng.integers(15, 86)), split_of[voice]))
    return plan


def build(spec: KwsData) -> dict[str, np.ndarray]:
    """Synthesize every utterance (espeak-ng, a few at a time), mix noise, compute log-mel features."""
    espeak()
    plan = _plan(spec)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        speech = list(pool.map(lambda p: None if p[1] is None else speak(p[1], p[2], p[3], p[4]), plan))
    rng = np.random.default_rng(spec.seed + 1)
    audio = torch.tensor(np.stack([_clip(s, spec, rng) for s in speech]))
    features = torch.cat([log_mel(chunk, spec.mel_bins, spec.hop_ms) for chunk in audio.split(256)])
    return {"x": features.numpy(), "y": np.array([p[0] for p in plan], dtype=np.int64),
            "split": np.array([p[5] for p in plan], dtype=np.int8)}


def _cached(spec: KwsData) -> dict[str, np.ndarray]:
    from edgecompress.baseline import cache_dir  # (imports the recipe, which imports the data options)

    key = json.dumps({"v": VERSION, **spec.model_dump(mode="json", exclude={"batch_size"})}, sort_keys=True)
    path = cache_dir() / "kws" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path) as data:
            return dict(data)
    arrays = build(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    atomic.replace(tmp, path)
    return arrays


@register_dataset("kws")
def kws(spec: KwsData) -> Task:
    """Spoken command words (espeak-ng), log-mel [1, frames, mel_bins]; split by voice; normalized by the train split."""
    data = _cached(spec)
    x, y, split = data["x"], data["y"], data["split"]
    train = split == 0
    mean, std = float(x[train].mean()), float(x[train].std()) + 1e-6
    x = (x - mean) / std
    parts = tuple((x[split == s], y[split == s]) for s in (0, 1, 2))
    for name, (_, labels) in zip(("train", "val", "test"), parts):
        if len(labels) == 0:
            raise EdgeCompressError(f"the {name} split of kws has no utterances", where="data (kws)",
                                    fix="raise samples_per_class, or val_fraction / test_fraction")
    return _task("kws", parts, len(classes(spec)))
