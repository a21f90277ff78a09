"""Clip planning: how many frames an audio track makes, and which audio each clip sees.

Pure integer arithmetic on sample counts (no float rounding surprises), shared by
the runtime, the streaming path and the PyTorch reference pipeline so that all
three cut the same clips from the same audio.

- frames = round(samples x fps / 16000), halves rounded up: 0.1 s at 25 fps is
  2.5 -> 3 frames, 7.3 s is 182.5 -> 183 frames; Hallo's bundles ("track" windowing) take
  the ceiling as Hallo does: 7.31 s is 182.75 -> 183 frames, 7.3 s still 183.
- clip c covers frames [c*f, c*f + f); the last clip is padded with silent audio
  and its extra frames are dropped.
- clip c's audio window is [c*f - L, c*f + f + m) frames (L frames of left context,
  m = 2 frames of look-ahead), zero outside the track; so a stream can start clip c
  as soon as sample (c*f + f + m) * 640 has arrived (25 fps).
- a hop (``hop`` = h < f, for live latency): every clip still generates f frames but keeps
  its first h, covering [c*h, c*h + h); it hears the audio of frames [c*h - L, c*h + h + m)
  and silence after (so a file and a stream cut it alike), and the next clip continues from
  its last n kept frames. A clip then waits for h + m frames of audio instead of f + m
  (240 ms instead of 400 ms for the demo models at h = 4), for f/h times the compute per
  frame. Every clip must keep it: at real-time pace, playback without a stall cannot start
  before the longest clip's audio has arrived, so a short first clip alone buys nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bundle import SAMPLE_RATE


def frame_count(samples: int, fps: int, ceil: bool = False) -> int:
    """round(samples / 16000 x fps), halves up, exactly; ``ceil``: the ceiling (Hallo's count)."""
    if ceil:
        return -(-samples * fps // SAMPLE_RATE)
    return (samples * fps + SAMPLE_RATE // 2) // SAMPLE_RATE


@dataclass(frozen=True)
class ClipWindows:
    """Which audio each clip sees: independent of the track's length (a live stream's is not known yet)."""

    clip_frames: int  # f
    motion_frames: int  # n
    fps: int
    left_context: int  # L, audio frames before a clip
    lookahead: int  # m, audio frames after a clip
    hop: int | None = None  # h: frames each clip keeps (None: the whole clip, f)

    def __post_init__(self) -> None:
        if self.hop is not None and not max(1, self.motion_frames) <= self.hop <= self.clip_frames:
            raise ValueError(
                f"a hop of {self.hop} frames: give {max(1, self.motion_frames)}..{self.clip_frames} "
                "(at least the motion frames the next clip continues from, at most a clip)"
            )

    @property
    def step(self) -> int:
        """Frames each clip keeps: the hop, else the whole clip."""
        return self.clip_frames if self.hop is None else self.hop

    def start(self, clip: int) -> int:
        """The clip's first video frame."""
        return clip * self.step

    @property
    def samples_per_frame(self) -> int:
        return SAMPLE_RATE // self.fps

    @property
    def window_samples(self) -> int:
        return (self.left_context + self.clip_frames + self.lookahead) * self.samples_per_frame

    def window_range(self, clip: int) -> tuple[int, int]:
        """Sample range [start, stop) of the clip's audio window (may reach outside the track)."""
        start = (self.start(clip) - self.left_context) * self.samples_per_frame
        return start, start + self.window_samples

    def heard_until(self, clip: int) -> int:
        """The end of the audio the clip hears: the look-ahead past its kept frames."""
        return (self.start(clip) + self.step + self.lookahead) * self.samples_per_frame

    def samples_needed(self, clip: int) -> int:
        """Samples that must have arrived before ``clip`` can start."""
        return self.heard_until(clip)

    def plan(self, samples: int, ceil: bool = False) -> ClipPlan:
        """The clips of a track of ``samples`` samples (``ceil``: its frames counted as Hallo counts them)."""
        frames = frame_count(samples, self.fps, ceil)
        return ClipPlan(self.clip_frames, self.motion_frames, self.fps, self.left_context, self.lookahead, self.hop, frames=frames)


@dataclass(frozen=True)
class ClipPlan(ClipWindows):
    frames: int = 0  # total video frames

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frames < 1:
            raise ValueError("the audio is shorter than one video frame")

    @classmethod
    def for_samples(cls, samples: int, *, clip_frames: int, motion_frames: int, fps: int, left_context: int, lookahead: int) -> ClipPlan:
        return ClipWindows(clip_frames, motion_frames, fps, left_context, lookahead).plan(samples)

    @property
    def clips(self) -> int:
        return -(-self.frames // self.step)

    def kept(self, clip: int) -> int:
        """Frames of ``clip`` that are part of the video (the last clip is trimmed)."""
        return min(self.step, self.frames - self.start(clip))


def audio_window(samples: np.ndarray, plan: ClipWindows, clip: int, offset: int = 0) -> np.ndarray:
    """The clip's window of float32 samples, zero outside the track: shape (1, window_samples).

    ``offset``: the track sample ``samples[0]`` is (a live stream keeps only its recent samples).
    """
    start, stop = plan.window_range(clip)
    heard = plan.heard_until(clip) - offset
    start, stop = start - offset, stop - offset
    out = np.zeros(stop - start, dtype=np.float32)
    lo, hi = max(start, 0), min(stop, heard, len(samples))
    if hi > lo:
        out[lo - start : hi - start] = samples[lo:hi]
    return out[None]


def clip_noise(seed: int, clip: int, shape: tuple[int, ...], clamp: float = 0.0) -> np.ndarray:
    """The initial noise of one clip: standard normal float32, a pure function of (seed, clip); ``clamp`` > 0:
    clipped to +-clamp (EchoMimic draws its latents so: 1.5, pipeline_echo_mimic_acc.py prepare_latents)."""
    noise = np.random.default_rng([seed, clip]).standard_normal(shape, dtype=np.float32)
    return np.clip(noise, -clamp, clamp) if clamp > 0 else noise


def step_noise(seed: int, clip: int, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """Noise injected at a step by stochastic samplers (LCM), a pure function of (seed, clip, step)."""
    return np.random.default_rng([seed, clip, step + 1]).standard_normal(shape, dtype=np.float32)
