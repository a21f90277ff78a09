"""The audio encoder: wav2vec2 (transformers), then per-frame tokens.

Two windowings (``AudioConfig.windowing``). "clip" (EMO's presets): the input is the clip's window of 16 kHz samples, ``left_context + f + window`` frames
long (the same window for files, live streams and the reference pipeline, so all
three agree). wav2vec2's convolutional features are interpolated to the video
frame rate before its transformer (as Hallo does), the hidden states of all
transformer layers are stacked per frame, each clip frame takes its m neighbours
each side (EMO: m=2, five frames), and an MLP projects them to ``tokens`` tokens
(Hallo's ``AudioProjModel`` layout: proj1, proj2, proj3, norm).

"track" (Hallo, ``hallo/datasets/audio_processor.py``): wav2vec2 runs once over the whole track,
normalised once. Its global parts (the input normalisation, the first conv's GroupNorm over time,
the interpolation to the frame rate) are computed over the whole track by the runtime
(``runtime/track_audio.py``) and enter each static chunk pass as inputs: ``conv_sums`` gives the
GroupNorm's statistics, ``track_features`` one chunk's hidden states, its frames outside the
track masked out of the positional conv and the attention, so that a track of up to
``chunk`` frames is exactly one pass; ``project`` turns each frame's clamped neighbours into tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from .config import AudioConfig


def wav2vec2_config(cfg: AudioConfig) -> Wav2Vec2Config:
    return Wav2Vec2Config(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        conv_dim=(cfg.conv_dim,) * 7,
        num_conv_pos_embeddings=cfg.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=cfg.num_conv_pos_embedding_groups,
        feat_extract_norm="group",  # wav2vec2-base
        do_stable_layer_norm=False,
        apply_spec_augment=False,
        mask_time_prob=0.0,  # no SpecAugment: its masked_spec_embed is training-only (and ignores the meta device)
        attn_implementation="eager",  # exports as plain MatMul/Softmax
    )


class AudioProjection(nn.Module):
    """(f, 2m+1, layers, hidden) -> (f, tokens, dim): Hallo's AudioProjModel."""

    def __init__(self, cfg: AudioConfig, dim: int):
        super().__init__()
        self.tokens, self.dim = cfg.tokens, dim
        self.proj1 = nn.Linear((2 * cfg.window + 1) * cfg.num_hidden_layers * cfg.hidden_size, cfg.proj_hidden)
        self.proj2 = nn.Linear(cfg.proj_hidden, cfg.proj_hidden)
        self.proj3 = nn.Linear(cfg.proj_hidden, cfg.tokens * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.proj2(torch.relu(self.proj1(x.flatten(1)))))
        return self.norm(self.proj3(h).reshape(x.shape[0], self.tokens, self.dim))


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AudioConfig, dim: int, clip_frames: int):
        super().__init__()
        self.cfg, self.clip_frames = cfg, clip_frames
        self.wav2vec2 = Wav2Vec2Model(wav2vec2_config(cfg))
        self.proj = AudioProjection(cfg, dim)

    @property
    def window_frames(self) -> int:
        return self.cfg.left_context + self.clip_frames + self.cfg.right_context

    def hidden_states(self, samples: Tensor) -> Tensor:
        """(1, S) window samples -> (W, layers, hidden) at the video frame rate."""
        x = samples
        if self.cfg.do_normalize:  # Wav2Vec2FeatureExtractor's per-utterance normalisation
            x = (x - x.mean(dim=-1, keepdim=True)) / torch.sqrt(x.var(dim=-1, keepdim=True, unbiased=False) + 1e-7)
        w2v = self.wav2vec2
        feats = w2v.feature_extractor(x)  # (1, C, ~2W): wav2vec2 runs at 50 Hz
        feats = F.interpolate(feats, size=self.window_frames, mode="linear", align_corners=True).transpose(1, 2)
        h, _ = w2v.feature_projection(feats)
        # wav2vec2-base's encoder, walked explicitly to keep every layer's output
        # (no output hooks: the graph must show what it returns)
        enc = w2v.encoder
        h = enc.layer_norm(h + enc.pos_conv_embed(h))
        layers = []
        for layer in enc.layers:
            h = layer(h)
            h = h[0] if isinstance(h, tuple) else h  # transformers 4 returns a tuple, 5 a tensor
            layers.append(h)
        return torch.stack(layers, dim=2)[0]

    # -- "track" windowing: Hallo's one pass over the whole track, in static chunks ----------
    def conv_sums(self, samples: Tensor, conv_mask: Tensor) -> Tensor:
        """(1, S) normalised samples, (K,) 0/1 over the first conv's frames -> (2, C): their sum and sum of squares per channel."""
        h = self.wav2vec2.feature_extractor.conv_layers[0].conv(samples[:, None])[0] * conv_mask
        return torch.stack([h.sum(-1), (h * h).sum(-1)])

    def track_features(self, samples: Tensor, conv_mean: Tensor, conv_var: Tensor, resample: Tensor, frame_mask: Tensor) -> Tensor:
        """One chunk of the whole-track pass -> (T, layers, hidden).

        samples (1, S): the normalised track from one frame before the chunk's first row;
        conv_mean, conv_var (C,): the first conv's GroupNorm statistics over the whole track;
        resample (T, K): the whole track's linear interpolation to the frame rate, as weights
        over this chunk's conv frames; frame_mask (T,): 1 for rows inside the track.
        """
        w2v = self.wav2vec2
        first, *rest = w2v.feature_extractor.conv_layers
        norm = first.layer_norm  # GroupNorm(C, C): each channel over time, here over the whole track
        h = first.conv(samples[:, None])
        h = (h - conv_mean[:, None]) * (norm.weight * torch.rsqrt(conv_var + norm.eps))[:, None] + norm.bias[:, None]
        h = first.activation(h)
        for layer in rest:
            h = layer(h)
        feats = (resample @ h[0].transpose(0, 1))[None]  # (1, T, C) at the frame rate
        x, _ = w2v.feature_projection(feats)
        x = x * frame_mask[None, :, None]  # outside the track: the positional conv's zero padding
        enc = w2v.encoder
        x = enc.layer_norm(x + enc.pos_conv_embed(x))
        bias = ((frame_mask - 1.0) * 1e9)[None, None, None, :]  # no attention to rows outside the track
        layers = []
        for layer in enc.layers:
            x = layer(x, attention_mask=bias)
            x = x[0] if isinstance(x, tuple) else x
            layers.append(x)
        return torch.stack(layers, dim=2)[0]

    def project(self, windows: Tensor) -> Tensor:
        """(f, 2m+1, layers, hidden) each frame's neighbours -> (f, tokens, dim)."""
        return self.proj(windows)

    def forward(self, samples: Tensor) -> Tensor:
        """(1, S) window samples -> (f, tokens, dim): the clip frames' audio tokens."""
        h = self.hidden_states(samples)
        m, lc = self.cfg.window, self.cfg.left_context
        windows = torch.stack([h[lc + j - m : lc + j + m + 1] for j in range(self.clip_frames)])
        return self.proj(windows)
