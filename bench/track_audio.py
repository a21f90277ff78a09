"""Hallo's "track" audio windowing: how far the live path's features are from the file path's.

The file path runs wav2vec2 over the whole track (one pass up to a chunk, else overlapping
chunks); a live stream runs, per clip, one chunk ending at the clip's look-ahead with the
normalisation statistics of the audio so far (runtime/track_audio.py). This prints the SQNR of
the live path's clip windows (what audio_encoder binds) against the file path's, per clip and
over the track, on the example speech, for a preset's wav2vec2 with random weights (seed 0)
run as the PyTorch modules the bundle exports:

    python bench/track_audio.py [--preset hallo-tiny] [--seconds 6]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from emote.engines.probe import cpu_class
from emote.models.audio import AudioEncoder
from emote.models.config import preset
from emote.runtime.audio import load_audio
from emote.runtime.clips import ClipWindows
from emote.runtime.examples import SPEECH
from emote.runtime.track_audio import TrackAudio, clip_windows


class Torch:
    def __init__(self, fn, inputs, output):
        self.fn, self.inputs, self.output = fn, inputs, output

    def run(self, feeds):
        with torch.no_grad():
            return {self.output: self.fn(*(torch.from_numpy(np.asarray(feeds[n])) for n in self.inputs)).numpy()}


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="hallo-tiny")
    ap.add_argument("--seconds", type=float, default=None, help="the example speech's first seconds (default: all)")
    args = ap.parse_args()
    cfg = preset(args.preset)
    torch.manual_seed(0)
    enc = AudioEncoder(cfg.audio, cfg.unet.cross_attention_dim, cfg.frames).eval()
    track = TrackAudio(
        Torch(enc.conv_sums, ("audio", "conv_mask"), "conv_sums"),
        Torch(enc.track_features, ("audio", "conv_mean", "conv_var", "resample", "frame_mask"), "audio_features"),
        chunk=cfg.audio.chunk,
        context=cfg.audio.chunk_context,
        samples_per_frame=cfg.samples_per_frame,
    )
    audio = load_audio(SPEECH)
    if args.seconds:
        audio = audio[: int(args.seconds * 16000)]
    f, m = cfg.frames, cfg.audio.window
    plan = ClipWindows(f, cfg.motion_frames, cfg.fps, cfg.audio.left_context, m).plan(len(audio), ceil=True)
    whole = track.track(audio, plan.clips * f)
    file_w, live_w = [], []
    for c in range(plan.clips):
        end = (c + 1) * f + m
        file_w.append(clip_windows(whole, 0, c, f, m, len(whole) - 1))
        live_w.append(clip_windows(track.live(audio, end), end - cfg.audio.chunk, c, f, m, end - 1))
    per = [sqnr(a, b) for a, b in zip(file_w, live_w)]
    print(
        f"{args.preset}: {len(audio) / 16000:.2f} s, {plan.clips} clips of {f} frames, chunk {cfg.audio.chunk} frames; CPU {cpu_class().label}"
    )
    print(
        f"live vs file clip windows: SQNR over the track {sqnr(np.concatenate(file_w), np.concatenate(live_w)):.1f} dB; "
        f"per clip min {min(per):.1f}, median {np.median(per):.1f}, max {max(per):.1f} dB"
    )
    print("per clip:", " ".join(f"{v:.1f}" for v in per))


if __name__ == "__main__":
    main()
