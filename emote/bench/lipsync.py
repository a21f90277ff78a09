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

from ..bundle import SAMPLE_RATE

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


# -- the mouth reader ----------------------------------------------------------------------------------------------
MODEL = Path(__file__).resolve().parent.parent / "weights" / "lipsync" / "mouth.onnx"
MOUTH_REGION = (slice(48, 96), slice(32, 96))  # rows, columns of a 128 px portrait crop that hold the mouth


class MouthEstimator:
    """Reads the mouth opening (0 closed .. 1 wide open) of 128 px portrait frames: a small CNN in ONNX Runtime.

    Trained on the generator's renders and their VAE reconstructions (``training/lipsync.py``);
    its input is the frame as the runtime makes it (uint8 (N, 128, 128, 3), face centred by
    ``emote.runtime.face``), the mouth region is cut inside the graph.
    """

    def __init__(self, path: str | Path = MODEL, threads: int = 1):
        import onnxruntime as ort

        from ..errors import EmoteError

        path = Path(path)
        if not path.is_file():
            raise EmoteError(f"the mouth estimator {path} is missing: train it with `python -m training.lipsync`")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.size = self.session.get_inputs()[0].shape[1]

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, R, R, 3) uint8 -> (N,) float32 mouth opening; frames of another size are resized to the model's."""
        frames = np.asarray(frames)
        if frames.shape[1] != self.size:
            from PIL import Image

            frames = np.stack([np.asarray(Image.fromarray(f).resize((self.size, self.size), Image.BILINEAR)) for f in frames])
        return self.session.run(None, {self.input: np.ascontiguousarray(frames, dtype=np.uint8)})[0].reshape(-1)


@dataclass(frozen=True)
class LipSync:
    """A generated video scored against its audio and its reference portrait."""

    correlation: float  # Pearson r of estimated mouth opening vs mouth_signal(audio)
    identity: float  # mean Pearson r of each frame with the reference, outside the mouth, in the face box
    estimated: np.ndarray  # (N,) the estimator's reading of every frame
    expected: np.ndarray  # (N,) mouth_signal(audio).open


def identity_similarity(frames: np.ndarray, reference: np.ndarray, face_mask: np.ndarray) -> float:
    """Mean over frames of the Pearson correlation with the reference image over the face box minus the mouth."""
    keep = np.asarray(face_mask, bool).copy()
    rows, cols = MOUTH_REGION
    scale = frames.shape[1] / 128
    keep[int(rows.start * scale) : int(rows.stop * scale), int(cols.start * scale) : int(cols.stop * scale)] = False
    ref = reference[keep].astype(np.float64).reshape(-1)
    return float(np.mean([pearson(f[keep].reshape(-1), ref) for f in frames]))


def score(
    frames: np.ndarray,
    audio: np.ndarray,
    reference: np.ndarray,
    face_mask: np.ndarray,
    estimator: MouthEstimator | None = None,
    fps: int = 25,
) -> LipSync:
    """Lip sync (estimated vs audio-driven mouth opening) and identity of a generated video."""
    estimator = estimator or MouthEstimator()
    est = estimator(frames)
    expected = mouth_signal(audio, fps, frames=len(frames)).open
    return LipSync(pearson(est, expected), identity_similarity(frames, reference, face_mask), est, expected)
