"""The audio mark: a keyed spread-spectrum pattern in the muxed track's STFT band energies.

Detection only (no payload): it says "made by emote with this key", the video mark carries the
payload. The design is the classical one of Kirovski & Malvar ("Spread-spectrum watermarking of
audio signals", IEEE TSP 2003): chips of +-ALPHA_DB spread over a time-frequency grid of the
magnitude spectrum, detected by correlating the log-magnitude (whitened: minus its local mean)
with the chips. Written here from the paper's description, numpy only.

- Grid: BANDS bands log-spaced over 300-6000 Hz (inside what AAC at 64 kbps and a 16 kHz
  resampler keep) x CELLS time cells of CELL_S seconds: one period of 1.024 s, repeated over the
  whole track. Each (band, cell) gets a keyed chip of +-1; the track's STFT (any rate: cells and
  bands are in seconds and Hz, so resampling moves nothing) is scaled by 10^(ALPHA_DB x chip / 20)
  in that band and cell, then resynthesised (sqrt-Hann, half overlap: exact reconstruction).
- Detection: 16 kHz mono, STFT hop HOP_S; per band the log energy minus its moving mean over
  time and the frame's mean over bands (loudness and spectral tilt are not the mark); silent
  frames dropped. Folded modulo the period at each of SHIFTS time offsets (an encoder's priming
  delay, an edit), correlated with the chips; z = correlation / its standard deviation under the
  null (the folded cells' energy). The p-value counts the shifts tried and uses the null spread of z
  measured on wrong keys (NULL_Z_SD; bench/RESULTS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..bundle import SAMPLE_RATE
from .watermark import DETECT_P, Key

BANDS = 40
F_LO, F_HI = 300.0, 6000.0  # Hz: above the hum, below a 16 kHz resampler's and AAC 64 kbps' cut-off
CELL_S = 0.032  # a chip's duration, s
CELLS = 32  # cells a period: 1.024 s, so a 1-3 s window holds one to three whole periods
ALPHA_DB = 1.5  # chip gain, dB: x1.19 or x0.84 of the band's amplitude
HOP_S = 0.016  # the detector's STFT hop (half a cell): the shift search's step
SHIFTS = int(round(CELLS * CELL_S / HOP_S))  # 64 offsets over one period
DETECT_RATE = SAMPLE_RATE
SILENCE_DB = 50.0  # frames this far under the track's loudest carry no evidence
NULL_Z_SD = 1.0  # z's spread over wrong keys (fitted: bench/watermark.py --audio; about 1 by construction)


@lru_cache(maxsize=8)
def chips(key: Key) -> np.ndarray:
    """(BANDS, CELLS) +-1, from the key (a stream apart from the video tile's)."""
    rng = np.random.default_rng([key.seed, 0xA0D10])
    return rng.choice(np.array([-1.0, 1.0]), size=(BANDS, CELLS))


def _edges() -> np.ndarray:
    return F_LO * (F_HI / F_LO) ** (np.arange(BANDS + 1) / BANDS)


def _band_of(n_fft: int, rate: int) -> np.ndarray:
    """The band of every rfft bin (-1 outside the marked range)."""
    freqs = np.arange(n_fft // 2 + 1) * rate / n_fft
    band = np.searchsorted(_edges(), freqs, side="right") - 1
    band[(freqs < F_LO) | (freqs >= F_HI)] = -1
    return band


def _window(n: int) -> np.ndarray:
    return np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n))  # sqrt of a periodic Hann: squares sum to 1 at hop n/2


def _frames(x: np.ndarray, hop: int) -> np.ndarray:
    """(n_frames, 2 hop) windowed frames of x padded by a hop each side, hop apart."""
    n = 2 * hop
    padded = np.pad(x, (hop, hop + (-len(x)) % hop))
    count = (len(padded) - n) // hop + 1
    idx = np.arange(count)[:, None] * hop + np.arange(n)[None, :]
    return padded[idx] * _window(n)


def embed(samples: np.ndarray, rate: int, key: Key | None = None) -> np.ndarray:
    """The track with the mark: float32 (n,) or (n, channels) at ``rate``, every channel scaled alike."""
    key = key or Key.default()
    x = np.asarray(samples, np.float32)
    mono = x.ndim == 1
    x2 = x[:, None] if mono else x
    hop = max(1, int(round(rate * CELL_S / 2)))
    n = 2 * hop
    band = _band_of(n, rate)
    count = (len(x2) + hop + (-len(x2)) % hop + hop - n) // hop + 1
    t = (np.arange(count) * hop - hop + n / 2) / rate  # each frame's centre, s
    cell = np.floor(t / CELL_S).astype(np.int64) % CELLS
    gain_db = np.where(band[None, :] >= 0, ALPHA_DB * chips(key)[np.maximum(band, 0)][:, cell].T, 0.0)
    gain = (10.0 ** (gain_db / 20.0)).astype(np.float32)
    out = np.empty_like(x2)
    win = _window(n).astype(np.float32)
    for ch in range(x2.shape[1]):
        spec = np.fft.rfft(_frames(x2[:, ch], hop), axis=1) * gain
        y = np.fft.irfft(spec, n=n, axis=1).astype(np.float32) * win
        acc = np.zeros((count - 1) * hop + n, np.float32)
        for j in range(2):  # overlap-add in two passes of non-overlapping frames
            acc[j * hop : j * hop + len(y[j::2]) * n] += y[j::2].ravel()
        out[:, ch] = acc[hop : hop + len(x2)]
    out = np.clip(out, -1.0, 1.0)
    return out[:, 0] if mono else out


@dataclass(frozen=True)
class AudioDetection:
    marked: bool  # p_value < watermark.DETECT_P
    z: float  # the best shift's correlation in null standard deviations
    p_value: float  # chance of a z this high in an unmarked track, every shift counted
    seconds: float  # audio read

    def as_dict(self) -> dict:
        return {"marked": self.marked, "z": round(self.z, 2), "p_value": float(f"{self.p_value:.3g}"), "seconds": round(self.seconds, 2)}


def evidence(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """16 kHz mono -> whitened band log-energies (frames, BANDS) and each frame's time (s)."""
    hop = int(DETECT_RATE * HOP_S)
    n = 2 * hop
    band = _band_of(n, DETECT_RATE)
    power = np.abs(np.fft.rfft(_frames(np.asarray(samples, np.float32), hop), axis=1)) ** 2
    keep = band >= 0
    sums = np.zeros((power.shape[0], BANDS))
    for b in range(BANDS):
        sums[:, b] = power[:, keep & (band == b)].mean(axis=1) if np.any(band == b) else 0.0
    peak = float(sums.max()) if sums.size else 0.0
    level = 10 * np.log10(sums + peak * 1e-9 + 1e-20)
    k = 9  # frames of the moving mean (144 ms): slower changes are the programme, not the mark
    kernel = np.ones(k) / k
    smooth = np.stack([np.convolve(np.pad(level[:, b], k // 2, mode="edge"), kernel, mode="valid") for b in range(BANDS)], axis=1)
    white = level - smooth
    white -= white.mean(axis=1, keepdims=True)
    loud = 10 * np.log10(sums.sum(axis=1) + 1e-20)
    white[loud < loud.max(initial=-np.inf) - SILENCE_DB] = 0.0
    t = (np.arange(power.shape[0]) * hop - hop + n / 2) / DETECT_RATE
    return white, t


def folds(white: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(SHIFTS, BANDS, CELLS): the evidence summed per cell of the period at each time offset."""
    out = np.zeros((SHIFTS, BANDS, CELLS))
    for s in range(SHIFTS):
        cell = np.floor((t + s * HOP_S) / CELL_S + 1e-9).astype(np.int64) % CELLS
        for b in range(BANDS):
            out[s, b] = np.bincount(cell, weights=white[:, b], minlength=CELLS)
    return out


def scores(folded: np.ndarray, keys_chips: np.ndarray) -> np.ndarray:
    """(K, SHIFTS) z of each key's chips (K, BANDS, CELLS) at each offset."""
    corr = np.einsum("sbc,kbc->ks", folded, keys_chips)
    return corr / np.sqrt(np.maximum(np.sum(folded**2, axis=(1, 2)), 1e-30))[None, :]


def null_p(z: float) -> float:
    """The best of SHIFTS offsets reaching z in an unmarked track (Bonferroni over the offsets)."""
    return float(min(1.0, SHIFTS * 0.5 * math.erfc(z / NULL_Z_SD / math.sqrt(2))))


def detect(samples: np.ndarray, rate: int = DETECT_RATE, key: Key | None = None) -> AudioDetection:
    """Detection on a track (float32 mono at ``rate``; resampled to 16 kHz here when it is not)."""
    key = key or Key.default()
    x = np.asarray(samples, np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != DETECT_RATE:
        import soxr

        x = soxr.resample(x, rate, DETECT_RATE).astype(np.float32)
    seconds = len(x) / DETECT_RATE
    if len(x) < DETECT_RATE * CELL_S * CELLS:  # under one period: nothing to fold
        return AudioDetection(False, 0.0, 1.0, seconds)
    z = float(scores(folds(*evidence(x)), chips(key)[None]).max())
    p = null_p(z)
    return AudioDetection(p < DETECT_P, z, p, seconds)
