"""Hallo's "track" audio windowing: the runtime's chunked pass against one PyTorch pass over the track.

The runtime (runtime/track_audio.py, numpy) drives the two chunk graphs; here they run as the
PyTorch modules the bundle exports (their ONNX parity is `emote verify`'s, in test_hallo.py),
on hallo-tiny's wav2vec2 (chunks of 40 frames, 8 of overlap each side).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emote.runtime.clips import ClipWindows, frame_count
from emote.runtime.track_audio import TrackAudio, clip_windows, conv_frames


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - got) ** 2)))


class Torch:
    """A PyTorch function behind the engine interface the runtime calls (``run(feeds) -> outputs``)."""

    def __init__(self, fn, inputs: tuple[str, ...], output: str):
        self.fn, self.names, self.output = fn, inputs, output

    def run(self, feeds):
        with torch.no_grad():
            return {self.output: self.fn(*(torch.from_numpy(np.asarray(feeds[n])) for n in self.names)).numpy()}


@pytest.fixture(scope="module")
def hallo_tiny():
    from emote.models.audio import AudioEncoder
    from emote.models.config import preset

    cfg = preset("hallo-tiny")
    torch.manual_seed(0)
    enc = AudioEncoder(cfg.audio, cfg.unet.cross_attention_dim, cfg.frames).eval()
    track = TrackAudio(
        Torch(enc.conv_sums, ("audio", "conv_mask"), "conv_sums"),
        Torch(enc.track_features, ("audio", "conv_mean", "conv_var", "resample", "frame_mask"), "audio_features"),
        chunk=cfg.audio.chunk,
        context=cfg.audio.chunk_context,
        samples_per_frame=cfg.samples_per_frame,
    )
    return cfg, enc, track


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Voiced bursts over a quiet noise floor: loud and silent stretches, as speech has."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    envelope = np.clip(np.sin(2 * np.pi * 1.3 * t + rng.random() * 6), 0, None) ** 2
    voice = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 420 * t)
    return (0.3 * envelope * voice + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def rows_of(cfg, samples: int) -> int:
    plan = ClipWindows(cfg.frames, cfg.motion_frames, cfg.fps, cfg.audio.left_context, cfg.audio.window).plan(samples, ceil=True)
    return plan.clips * cfg.frames


@pytest.mark.parametrize("seconds", [0.3, 1.37])  # shorter than one chunk (1.6 s): exactly one pass
def test_whole_track_features_equal_one_pytorch_pass(hallo_tiny, hallo_audio_pass, seconds):
    cfg, enc, track = hallo_tiny
    audio = speech_like(seconds, 1)
    expect, windows = hallo_audio_pass(enc.wav2vec2, audio, cfg.frames)
    got = track.track(audio, rows_of(cfg, len(audio)))
    assert got.shape == expect.shape == (rows_of(cfg, len(audio)), cfg.audio.num_hidden_layers, cfg.audio.hidden_size)
    assert sqnr(expect, got) >= 60
    # each clip binds its frames' neighbours, clamped at the track's ends, as Hallo's process_audio_emb
    for clip in range(len(got) // cfg.frames):
        bound = clip_windows(got, 0, clip, cfg.frames, cfg.audio.window, len(got) - 1)
        assert sqnr(windows[clip * cfg.frames : (clip + 1) * cfg.frames], bound) >= 60


def test_a_long_track_is_stitched_from_overlapping_chunks(hallo_tiny, hallo_audio_pass):
    """4.1 s = 104 frames: four chunks of 40. Only the attention's reach differs from one pass
    (40 frames, not 104); a seam (a chunk's edge kept, or rows misplaced) would cost far more."""
    cfg, enc, track = hallo_tiny
    audio = speech_like(4.1, 2)
    expect, _ = hallo_audio_pass(enc.wav2vec2, audio, cfg.frames)
    got = track.track(audio, rows_of(cfg, len(audio)))
    assert sqnr(expect, got) >= 45  # 58 dB here
    # per-frame error: no frame, at a chunk boundary or elsewhere, stands out from the rest
    err = np.sqrt(((expect - got) ** 2).mean(axis=(1, 2)) / (expect**2).mean())
    assert err.max() < 0.01  # 0.0016 here; a row off by one: ~0.3


def test_live_chunk_is_one_pass_over_the_audio_so_far(hallo_tiny, hallo_audio_pass):
    """A live clip's chunk ends at its look-ahead; before a chunk's worth of audio has arrived it is
    exactly one pass over what has (normalised over it), the rows before the track masked out."""
    cfg, enc, track = hallo_tiny
    audio = speech_like(2.5, 3)
    end = 3 * cfg.frames + cfg.audio.window  # clip 2's look-ahead: 14 frames
    expect, _ = hallo_audio_pass(enc.wav2vec2, audio[: end * cfg.samples_per_frame], 1)
    got = track.live(audio, end)
    assert got.shape[0] == cfg.audio.chunk
    assert sqnr(expect, got[cfg.audio.chunk - end :]) >= 60
    later = track.live(audio, 60)  # past one chunk: a chunk of left context, all rows inside the track
    assert np.all(np.isfinite(later))


def test_clip_windows_clamp_to_the_track():
    feats = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)
    first = clip_windows(feats, 0, 0, 4, 2, 9)[:, :, 0, 0]
    assert first.tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 5]]
    last = clip_windows(feats, 0, 2, 4, 2, 9)[:2, :, 0, 0]  # frames 8, 9 of a 10-row track
    assert last.tolist() == [[6, 7, 8, 9, 9], [7, 8, 9, 9, 9]]
    live = clip_windows(feats, -5, 0, 2, 2, 4)[:, :, 0, 0]  # a live chunk holding rows -5..4
    assert live.tolist() == [[5, 5, 5, 6, 7], [5, 5, 6, 7, 8]]


def test_hallo_counts_frames_by_the_ceiling():
    assert frame_count(int(7.31 * 16000), 25) == 183 and frame_count(int(7.31 * 16000), 25, ceil=True) == 183
    assert frame_count(16000 + 1, 25) == 25 and frame_count(16000 + 1, 25, ceil=True) == 26
    assert frame_count(int(0.1 * 16000), 25, ceil=True) == 3 and frame_count(16000, 25, ceil=True) == 25


def test_conv_frames_match_wav2vec2(hallo_tiny):
    _, enc, _ = hallo_tiny
    for n in (400, 639, 640, 641, 6400, 6720):
        with torch.no_grad():
            assert enc.wav2vec2.feature_extractor(torch.zeros(1, n)).shape[-1] == conv_frames(n)
