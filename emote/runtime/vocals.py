"""Vocal separation before the audio encoder: a user-supplied MDX-Net model on ONNX Runtime.

Hallo runs ``Kim_Vocal_2.onnx`` (UVR's MDX-Net vocal model) through ``audio-separator`` before
wav2vec2, so music and background noise do not reach the audio features. This module runs the
same kind of model the same way, with numpy for the spectrograms (the runtime imports no torch):

- the track at 44.1 kHz, stereo (mono duplicated), peak-normalised to 0.9 when louder;
- padded with ``n_fft // 2`` zeros in front and to whole generation windows behind, then cut in
  chunks of ``hop x (frames - 1)`` samples (261,120: 5.9 s) every 75 % of a chunk;
- per chunk: an STFT (periodic Hann window of ``n_fft``, hop 1024, centred with reflection, as
  ``torch.stft``), the first ``freq bins`` bins laid out as ``[L.re, L.im, R.re, R.im]``, the
  first 3 bins zeroed; the model's output spectrum back through the inverse STFT;
- the chunks Hann-weighted and averaged where they overlap, the padding trimmed; channels
  averaged and resampled to the model's 16 kHz.

The model is given, never downloaded. Its input shape ``[batch, 4, freq bins, frames]`` fixes
the chunk; ``n_fft`` is not in the model: 7680 for Kim_Vocal_2 and UVR-MDX-NET-Voc_FT
(``audio-separator``'s model data), others differ. The gain ``audio-separator`` applies after
separation (``compensate``, 1.0-1.05) is left out: the audio encoders normalise their input.
Vocal separation runs on whole tracks (a chunk is 5.9 s): live streams should carry clean voice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soxr

from ..bundle import SAMPLE_RATE
from ..errors import EmoteError

RATE = 44100  # the rate MDX-Net models are trained at
HOP = 1024
N_FFT = 7680  # Kim_Vocal_2's
OVERLAP = 0.25  # audio-separator's default for MDX models
PEAK = 0.9  # audio-separator's normalisation threshold
LOW_BINS = 3  # zeroed before the model, as UVR does


def hann(n: int) -> np.ndarray:
    """The periodic Hann window (``torch.hann_window(n, periodic=True)``)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(..., T) -> (..., n_fft // 2 + 1, 1 + T // hop) complex, as ``torch.stft(center=True)`` (reflect padding)."""
    pad = n_fft // 2
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft, axis=-1)[..., ::hop, :]
    return np.fft.rfft(frames * hann(n_fft), axis=-1).swapaxes(-1, -2)


def istft(spec: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """The inverse of ``stft``: (..., bins, frames) -> (..., hop x (frames - 1)), as ``torch.istft(center=True)``."""
    window = hann(n_fft)
    seg = np.fft.irfft(spec.swapaxes(-1, -2), n=n_fft, axis=-1).astype(np.float32) * window
    n = seg.shape[-2]
    total = n_fft + hop * (n - 1)
    out = np.zeros(seg.shape[:-2] + (total,), np.float32)
    envelope = np.zeros(total, np.float32)
    for i in range(n):
        out[..., i * hop : i * hop + n_fft] += seg[..., i, :]
        envelope[i * hop : i * hop + n_fft] += window * window
    pad = n_fft // 2
    return out[..., pad : total - pad] / envelope[pad : total - pad]


class VocalSeparator:
    """``VocalSeparator("Kim_Vocal_2.onnx")(track, rate)`` -> the vocals, float32 mono at 16 kHz."""

    def __init__(self, model: str | Path, *, n_fft: int = N_FFT, threads: int | None = None):
        import onnxruntime as ort

        path = Path(model)
        if not path.is_file():
            raise EmoteError(f"--vocal-model {path}: no such file")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own types for an unreadable or invalid model
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
            raise EmoteError(f"--vocal-model {path}: not an ONNX model ONNX Runtime can load ({reason})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 and len(outputs) >= 1 else None
        ok = shape is not None and len(shape) == 4 and shape[1] == 4 and all(isinstance(d, int) for d in shape[2:])
        if not ok:
            got = ", ".join(f"{i.name} {i.shape}" for i in inputs)
            raise EmoteError(
                f"--vocal-model {path}: expected an MDX-Net separation model (one input [batch, 4, freq bins, frames], "
                f"e.g. Kim_Vocal_2.onnx), got inputs {got}"
            )
        self.path, self.n_fft, self.input = path, n_fft, inputs[0].name
        self.dim_f, self.dim_t = shape[2], shape[3]
        self.batch = shape[0] if isinstance(shape[0], int) else 1
        if self.dim_f > n_fft // 2 + 1:
            raise EmoteError(
                f"--vocal-model {path}: its {self.dim_f} frequency bins need an FFT of at least {2 * (self.dim_f - 1)} "
                f"(--vocal-n-fft is {n_fft}; Kim_Vocal_2's is {N_FFT})"
            )
        self.chunk = HOP * (self.dim_t - 1)
        self.trim = n_fft // 2
        if self.chunk <= 2 * self.trim:
            raise EmoteError(f"--vocal-model {path}: {self.dim_t} frames are too few for an FFT of {n_fft}")

    def _spectrum(self, chunk: np.ndarray) -> np.ndarray:
        """(2, chunk) -> the model's input (1, 4, dim_f, dim_t): per channel its real and imaginary parts."""
        spec = stft(chunk, self.n_fft, HOP)[:, : self.dim_f]  # (2, dim_f, dim_t) complex
        x = np.stack([spec.real, spec.imag], axis=1).reshape(1, 4, self.dim_f, self.dim_t).astype(np.float32)
        x[:, :, :LOW_BINS] = 0
        return x

    def _wave(self, y: np.ndarray) -> np.ndarray:
        """The model's output (1, 4, dim_f, dim_t) -> (2, chunk) samples."""
        y = y.reshape(2, 2, self.dim_f, self.dim_t)
        spec = np.zeros((2, self.n_fft // 2 + 1, self.dim_t), np.complex64)
        spec[:, : self.dim_f] = y[:, 0] + 1j * y[:, 1]
        return istft(spec, self.n_fft, HOP)

    def separate(self, stereo: np.ndarray, progress=None) -> np.ndarray:
        """(2, n) at 44.1 kHz -> the vocals (2, n) at 44.1 kHz."""
        n, chunk, trim = stereo.shape[1], self.chunk, self.trim
        gen = chunk - 2 * trim
        pad = gen + trim - n % gen
        mix = np.concatenate([np.zeros((2, trim), np.float32), stereo, np.zeros((2, pad), np.float32)], axis=1)
        step = int((1 - OVERLAP) * chunk)
        result = np.zeros(mix.shape, np.float32)
        weight = np.zeros(mix.shape[1], np.float32)
        starts = range(0, mix.shape[1], step)
        for k, start in enumerate(starts):
            end = min(start + chunk, mix.shape[1])
            part = np.zeros((2, chunk), np.float32)
            part[:, : end - start] = mix[:, start:end]
            y = self.session.run(None, {self.input: np.repeat(self._spectrum(part), self.batch, axis=0)})[0][:1]
            if y.shape != (1, 4, self.dim_f, self.dim_t):
                raise EmoteError(f"--vocal-model {self.path}: its output is {list(y.shape)}, not its input's shape")
            window = np.hanning(end - start).astype(np.float32)
            result[:, start:end] += self._wave(y)[:, : end - start] * window
            weight[start:end] += window
            if progress is not None:
                progress(k + 1, len(starts))
        out = np.where(weight > 0, result / np.maximum(weight, 1e-12), 0.0)  # zero weight: the padding only
        return out[:, trim:-trim][:, :n].astype(np.float32)

    def __call__(self, track: np.ndarray, rate: int, progress=None) -> np.ndarray:
        """A track as read (n,) or (n, channels) at ``rate`` -> the vocals, float32 mono at 16 kHz."""
        x = np.asarray(track, np.float32)
        x = x[:, None] if x.ndim == 1 else x
        if x.shape[1] > 2:
            x = x[:, :2]
        x = x if rate == RATE else soxr.resample(x, rate, RATE, quality="HQ")
        stereo = np.ascontiguousarray((np.repeat(x, 2, axis=1) if x.shape[1] == 1 else x).T, dtype=np.float32)
        peak = float(np.abs(stereo).max()) if stereo.size else 0.0
        if peak > PEAK:
            stereo *= PEAK / peak
        if stereo.shape[1] == 0:
            return np.zeros(0, np.float32)
        vocals = self.separate(stereo, progress).mean(axis=0)
        return np.ascontiguousarray(soxr.resample(vocals, RATE, SAMPLE_RATE, quality="HQ"), dtype=np.float32)
