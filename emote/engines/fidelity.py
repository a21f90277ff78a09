"""How close one engine's outputs are to another's: SQNR of tensors, PSNR of frames. numpy only.

- SQNR = 10 log10(sum ref^2 / sum (got - ref)^2) dB (inf when equal);
- PSNR = 10 log10(peak^2 / mean (got - ref)^2) dB, peak 255 for uint8 frames (inf when equal);
- SSIM of two gray images as Wang et al. 2004 define it (11-tap Gaussian window, sigma 1.5,
  K1 0.01, K2 0.03, the mean over the window positions that fit).

Parity (`emote verify`), the bench and `emote tune` all measure with these; the bars they
are held to are in ``emote.precision``.
"""

from __future__ import annotations

import math

import numpy as np


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    noise = float(np.sum((got - ref) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def psnr_db(ref: np.ndarray, got: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((ref.astype(np.float64) - got.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def _gauss_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """A separable filter over the positions where the whole window fits (rows, then columns)."""
    k = len(taps)
    rows = sum(taps[i] * x[i : x.shape[0] - k + 1 + i] for i in range(k))
    return sum(taps[i] * rows[:, i : rows.shape[1] - k + 1 + i] for i in range(k))


def ssim(ref: np.ndarray, got: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM of two gray images (H, W), H and W at least 11."""
    x, y = ref.astype(np.float64), got.astype(np.float64)
    taps = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    taps /= taps.sum()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mx, my = _gauss_valid(x, taps), _gauss_valid(y, taps)
    vx = _gauss_valid(x * x, taps) - mx * mx
    vy = _gauss_valid(y * y, taps) - my * my
    cxy = _gauss_valid(x * y, taps) - mx * my
    return float(np.mean(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))))
