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

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ..runtime.whisper_mel import HOP, LOG_FLOOR, N_FFT, dft_basis, mel_filters  # numpy: the runtime computes the file path's mel
from .config import WHISPER_FRAME_WINDOW, AudioConfig


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
        return self.frame_tokens(self.states(samples, positions), index)

    @staticmethod
    def frame_tokens(states: Tensor, index: Tensor) -> Tensor:
        """(T, L+1, D) states, (f, 10) rows -> (f, 10 (L+1), D): each frame's rows, the state index fastest."""
        return states[index.reshape(-1)].reshape(index.shape[0], WHISPER_FRAME_WINDOW * states.shape[1], states.shape[2])
