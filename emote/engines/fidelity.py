"""How close one engine's outputs are to another's: SQNR of tensors, PSNR of frames. numpy only.

- SQNR = 10 log10(sum ref^2 / sum (got - ref)^2) dB (inf when equal);
- PSNR = 10 log10(peak^2 / mean (got - ref)^2) dB, peak 255 for uint8 frames (inf when equal).

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
