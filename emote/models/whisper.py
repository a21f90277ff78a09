"""EchoMimic's audio encoder: whisper's log-mel front end and encoder, five states per 50 Hz frame.

EchoMimic (src/models/whisper/) runs whisper-tiny's encoder and keeps, per 20 ms frame, the
conv stem plus positional embedding and the outputs of blocks 1-4, none through ``ln_post``:
(T, 5, 384). Video frame i then takes whisper frames centre-4 .. centre+5 (clamped to the
audio), centre = int(i * 50 / fps), flattened to 50 tokens with the state index fastest;
those go straight into attn2 (no projection).

Here one graph does it for one clip's window of samples: the log-mel spectrogram (the
STFT as a strided convolution with a fixed DFT basis, so it exports as one Conv), the
encoder walked block by block (transformers' ``WhisperEncoder`` weights), and a gather of
the per-frame windows by an index the runtime computes (``audio_index``: the clamping at
the audio's ends depends on where the clip sits in the video). Used by export and the
reference pipeline only.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ..bundle import SAMPLE_RATE
from .config import WHISPER_FRAME_WINDOW, AudioConfig

N_FFT = 400  # whisper: 25 ms windows at 16 kHz
HOP = 160  # 10 ms: 100 mel frames per second, 50 encoder states after conv2's stride 2
LOG_FLOOR = 8.0  # whisper clamps the log10 mel to (its maximum - 8)


def whisper_config(cfg: AudioConfig) -> WhisperConfig:
    return WhisperConfig(
        num_mel_bins=cfg.num_mel_bins,
        d_model=cfg.hidden_size,
        encoder_layers=cfg.num_hidden_layers,
        encoder_attention_heads=cfg.num_attention_heads,
        encoder_ffn_dim=cfg.intermediate_size,
        max_source_positions=cfg.max_source_positions,
        decoder_layers=1,
        decoder_attention_heads=cfg.num_attention_heads,
        decoder_ffn_dim=cfg.intermediate_size,
        attn_implementation="eager",  # exports as plain MatMul/Softmax
    )


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


def log_mel(samples: Tensor, n_mels: int) -> Tensor:
    """(1, S) 16 kHz samples -> (1, n_mels, S / 160): whisper's ``log_mel_spectrogram`` of exactly these samples."""
    basis = torch.from_numpy(dft_basis()).to(samples.device)
    x = F.pad(samples[:, None], (N_FFT // 2, N_FFT // 2), mode="reflect")  # torch.stft's center=True
    spec = F.conv1d(x, basis, stride=HOP)[..., :-1]  # whisper drops the last frame
    bins = basis.shape[0] // 2
    power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2
    mel = torch.matmul(torch.from_numpy(mel_filters(n_mels)).to(samples.device), power)
    log = torch.log10(torch.clamp(mel, min=1e-10))
    log = torch.maximum(log, log.amax(dim=(1, 2), keepdim=True) - LOG_FLOOR)
    return (log + 4.0) / 4.0


class WhisperAudioEncoder(nn.Module):
    """(1, S) samples of a clip's window + (f, 10) whisper-frame indices -> (f, 10 (L+1), D) audio tokens."""

    def __init__(self, cfg: AudioConfig, clip_frames: int):
        super().__init__()
        self.cfg, self.clip_frames = cfg, clip_frames
        self.whisper = WhisperEncoder(whisper_config(cfg))

    def states(self, samples: Tensor, positions: Tensor | None = None) -> Tensor:
        """(1, S) -> (T, L+1, D): the stem + positions, then each block's output; ``layer_norm`` (ln_post) unused.

        ``positions`` (T,) int64: the positional table's row of each state (default 0 .. T-1; the runtime
        gives a window's states their rows in EchoMimic's 30 s segments: ``window_positions``)."""
        return self.mel_states(log_mel(samples, self.cfg.num_mel_bins), positions)

    def segment_states(self, samples: Tensor) -> Tensor:
        """(1, S) a whole track -> (T, L+1, D) as EchoMimic's file path makes them (its whisper ``transcribe``
        and ``audio2feature.audio2feat``): the track's log-mel normalised once (its maximum over the whole
        track), cut into segments of 2 x max_source_positions mel frames (30 s for whisper-tiny), each
        zero-padded to that length and encoded with the whole positional table, of which the states of the
        segment's own frames are kept (half its mel frames, rounded down). EchoMimic encodes in fp16; this
        in fp32. The runtime's per-clip windows differ (bench/RESULTS.md measures how far)."""
        mel = log_mel(samples, self.cfg.num_mel_bins)
        size = 2 * self.cfg.max_source_positions
        out = []
        for seek in range(0, mel.shape[-1], size):
            part = mel[..., seek : seek + size]
            out.append(self.mel_states(F.pad(part, (0, size - part.shape[-1])))[: part.shape[-1] // 2])
        return torch.cat(out)

    def mel_states(self, mel: Tensor, positions: Tensor | None = None) -> Tensor:
        """(1, n_mels, M) normalised log-mel -> (ceil(M / 2), L+1, D) states."""
        w = self.whisper
        h = F.gelu(w.conv2(F.gelu(w.conv1(mel)))).transpose(1, 2)
        h = h + (w.embed_positions.weight[: h.shape[1]] if positions is None else w.embed_positions.weight[positions])
        out = [h]
        for layer in w.layers:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h  # transformers 4 returns a tuple, 5 a tensor
            out.append(h)
        return torch.stack(out, dim=2)[0]

    def forward(self, samples: Tensor, index: Tensor, positions: Tensor | None = None) -> Tensor:
        """``index`` (f, 10) int64: each frame's whisper frames, as rows of ``states(samples, positions)``."""
        s = self.states(samples, positions)
        f = index.shape[0]
        return s[index.reshape(-1)].reshape(f, WHISPER_FRAME_WINDOW * s.shape[1], s.shape[2])
