"""Whisper's log-mel front end in numpy, for the runtime: EchoMimic's file path (its 30 s segments).

EchoMimic encodes a file (its whisper ``transcribe``, ``audio2feature.audio2feat``) as the whole
track's log-mel, normalised once (floored at the track's maximum - 8, then (x + 4) / 4), cut
into segments of 3000 mel frames (30 s; 2 x the encoder's positions), each zero-padded to that
length and encoded; of each segment the states of its own frames are kept (half its mel frames,
rounded down). ``track_log_mel`` and ``segments`` make the ``audio_segment`` graph's inputs; the
filters and DFT rows are also the export's (``models/whisper.py``: the STFT as one Conv).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

from ..bundle import SAMPLE_RATE

N_FFT = 400  # whisper: 25 ms windows at 16 kHz
HOP = 160  # 10 ms: 100 mel frames per second, 50 encoder states after conv2's stride 2
LOG_FLOOR = 8.0  # whisper clamps the log10 mel to (its maximum - 8)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, whisper's filters): linear below 1 kHz, log above."""
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    log = f >= 1000.0
    return np.where(log, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    log = m >= 15.0
    return np.where(log, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


@functools.cache
def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) triangular filters, Slaney-normalised: librosa.filters.mel as whisper ships them."""
    freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    ramps = edges[:, None] - freqs[None, :]
    lower = -ramps[:-2] / np.diff(edges)[:-1, None]
    upper = ramps[2:] / np.diff(edges)[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return (weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)


@functools.cache
def dft_basis(n_fft: int = N_FFT) -> np.ndarray:
    """(2 (1 + n_fft/2), 1, n_fft): the Hann-windowed real and imaginary DFT rows, a Conv1d weight."""
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann, torch.hann_window's default
    k = np.arange(1 + n_fft // 2)[:, None]
    angle = 2 * np.pi * k * n[None, :] / n_fft
    return np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])[:, None, :].astype(np.float32)


def track_log_mel(samples: np.ndarray, n_mels: int) -> np.ndarray:
    """(S,) 16 kHz samples -> (n_mels, S // 160) float32: whisper's ``log_mel_spectrogram`` of the whole
    track (the STFT centred with reflection padding, its last frame dropped), normalised once."""
    x = np.pad(np.asarray(samples, np.float32), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP][:-1]  # (S // 160, 400)
    basis = dft_basis()[:, 0, :].astype(np.float64)
    spec = frames.astype(np.float64) @ basis.T
    bins = basis.shape[0] // 2
    power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2
    log = np.log10(np.maximum(power @ mel_filters(n_mels).astype(np.float64).T, 1e-10)).T
    log = np.maximum(log, log.max() - LOG_FLOOR)
    return ((log + 4.0) / 4.0).astype(np.float32)


def segments(mel: np.ndarray, positions: int) -> Iterator[tuple[np.ndarray, int]]:
    """EchoMimic's segments of ``mel`` (n_mels, M): (1, n_mels, 2 x positions) zero-padded, and the states kept."""
    size = 2 * positions
    for seek in range(0, mel.shape[1], size):
        part = mel[:, seek : seek + size]
        padded = np.zeros((1, mel.shape[0], size), np.float32)
        padded[0, :, : part.shape[1]] = part
        yield padded, part.shape[1] // 2
