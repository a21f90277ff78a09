"""The lip-sync measure: how well a generated video's mouth follows its audio.

Two halves, as SyncNet-style evaluation has them, but for our synthetic world:

- ``mouth_signal(audio)``: the audio-driven ground truth, per video frame: how open
  (and how wide) the mouth of a speaker of this audio is. It is the very function
  the training-data generator (``training/``) draws mouths with, so on synthetic
  data it is the truth, and on any audio it is a deterministic reference.
- ``MouthEstimator``: a small CNN trained on the generator's renders (frame ->
  mouth opening), shipped as ONNX, run with ONNX Runtime: the "expert" that reads
  the mouth of a generated frame.

``lipsync_score`` is the Pearson correlation between the two over a video;
``identity_similarity`` compares generated frames with the reference portrait
outside the mouth. Imports numpy (and onnxruntime for the estimator) only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
WINDOW = 1024  # samples per analysis window: 64 ms, about two syllable nuclei apart
VOICE_BAND = (250.0, 2500.0)  # Hz: vowels' first two formants; fricatives (s, sh, f) sit above it
FRONT_BAND = (1500.0, 3500.0)  # Hz: the second formant of front vowels (ee, eh): a stretched mouth
BACK_BAND = (250.0, 1000.0)  # Hz: where rounded vowels (oo, oh) keep their energy
DYNAMIC_RANGE_DB = 30.0  # a voice this far below its loud syllables: mouth closed


@dataclass(frozen=True)
class MouthTrack:
    """Per-frame mouth controls: ``open`` 0 closed .. 1 wide open; ``wide`` 0 rounded .. 1 stretched."""

    open: np.ndarray
    wide: np.ndarray


def _band_energies(audio: np.ndarray, frames: int, fps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Energy in the voice, front and back bands of a Hann window centred on each video frame."""
    hop = SAMPLE_RATE / fps
    centres = ((np.arange(frames) + 0.5) * hop).astype(np.int64)
    padded = np.pad(np.asarray(audio, np.float32), (WINDOW // 2, WINDOW // 2))
    idx = centres[:, None] + np.arange(WINDOW)[None, :]  # window i starts WINDOW/2 before centre i
    windows = padded[np.clip(idx, 0, len(padded) - 1)] * np.hanning(WINDOW).astype(np.float32)
    power = np.abs(np.fft.rfft(windows, axis=1)) ** 2
    freqs = np.fft.rfftfreq(WINDOW, 1.0 / SAMPLE_RATE)

    def band(lo_hi):
        lo, hi = lo_hi
        return power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) + 1e-10

    return band(VOICE_BAND), band(FRONT_BAND), band(BACK_BAND)


def mouth_signal(audio: np.ndarray, fps: int = 25, frames: int | None = None) -> MouthTrack:
    """The audio-driven mouth of every video frame of ``audio`` (float32, 16 kHz).

    open: the voice band's level in dB, 0 at DYNAMIC_RANGE_DB below the track's loud
    syllables (its 95th percentile) and 1 at them, lightly smoothed (lips move
    slower than the spectrum). wide: front-vowel over back-vowel energy, squashed.
    Silence gives a closed mouth. ``frames`` defaults to round(seconds x fps).
    """
    audio = np.asarray(audio, np.float32).reshape(-1)
    if frames is None:
        frames = (len(audio) * fps + SAMPLE_RATE // 2) // SAMPLE_RATE
    if frames <= 0:
        return MouthTrack(np.zeros(0, np.float32), np.zeros(0, np.float32))
    voice, front, back = _band_energies(audio, frames, fps)
    level = 10.0 * np.log10(voice)
    loud = np.percentile(level, 95)
    floor = max(loud - DYNAMIC_RANGE_DB, -70.0)  # silence-only tracks: stay closed
    opening = np.clip((level - floor) / (loud - floor if loud > floor else 1.0), 0.0, 1.0) ** 1.5
    smooth = np.convolve(np.pad(opening, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    # log10(front/back) of voiced speech: median -1.3, quartiles -1.5 .. -1.0 (espeak-ng voices)
    wide = 1.0 / (1.0 + np.exp(-3.0 * (np.log10(front / back) + 1.3)))
    return MouthTrack(smooth.astype(np.float32), wide.astype(np.float32))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 where either side is constant (no signal to follow)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0
