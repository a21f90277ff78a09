"""Hallo's audio features: wav2vec2 over the whole track, normalised once, sliced per clip.

Bundles whose audio windowing is "track" (the `hallo` presets) get their audio as Hallo's
``AudioProcessor.preprocess`` makes it (``hallo/datasets/audio_processor.py:107-119``): the
track normalised to zero mean and unit variance once, padded with zeros to a whole number of
clips, wav2vec2 run over all of it with its features interpolated to the frame rate, and
every frame given its neighbours j-2..j+2 with the indices clamped to the track
(``scripts/inference.py`` ``process_audio_emb``).

The bundle's wav2vec2 is a static graph of ``chunk`` frames (``audio_features``). Its
global parts enter as inputs computed here over the whole track: the first conv's
GroupNorm statistics (summed by ``audio_stats`` over the track in chunks), the linear
interpolation to the frame rate (as a weight matrix) and a mask of the rows inside the
track (kept out of the positional conv and the attention). So a track of up to ``chunk``
frames is exactly Hallo's one pass; a longer one takes overlapping chunks, each keeping its
middle, ``chunk_context`` frames from either edge (there the attention sees ``chunk``
frames, not the whole track: the one difference from a single pass).

A live stream cannot wait for the whole track: each clip runs one chunk ending at the
clip's look-ahead (``chunk`` frames of left context), the samples normalised with the mean
and variance of everything that has arrived up to that point, the GroupNorm statistics
taken over the chunk. ``bench/track_audio.py`` measures how far that is from the file path.

Imports numpy only; the graphs run on the pipeline's backend.
"""

from __future__ import annotations

import numpy as np

CONV_LAYERS = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2))  # wav2vec2's feature convs: (kernel, stride)
FIRST_STRIDE = CONV_LAYERS[0][1]  # 5 samples per frame of the first conv (its GroupNorm runs over these)
HOP = 320  # samples per wav2vec2 feature frame: 5 x 2^6 (50 Hz)
NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm


def conv_frames(samples: int, layers: tuple[tuple[int, int], ...] = CONV_LAYERS) -> int:
    """Frames out of wav2vec2's convs (or its first ``layers``) for ``samples`` input samples."""
    n = samples
    for kernel, stride in layers:
        n = (n - kernel) // stride + 1 if n >= kernel else 0
    return n


def normalise(samples: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over all of ``samples`` (statistics in float64), as Wav2Vec2FeatureExtractor."""
    x = samples.astype(np.float64)
    return ((x - x.mean()) / np.sqrt(x.var() + NORM_EPS)).astype(np.float32)


def interpolation(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's linear interpolation with align_corners, n_in -> n_out frames: (left index, right index, right weight).

    Computed in float32 as torch computes it on the CPU (Hallo's ``linear_interpolation``).
    """
    t = np.arange(n_out, dtype=np.float32)
    scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    src = t * scale
    x0 = np.minimum(src.astype(np.int64), n_in - 1)
    x1 = np.minimum(x0 + 1, n_in - 1)
    w = np.clip(src - x0.astype(np.float32), 0, 1).astype(np.float32)
    return x0, x1, w


def clip_windows(features: np.ndarray, first_row: int, clip: int, frames: int, m: int, last_row: int) -> np.ndarray:
    """(f, 2m+1, layers, hidden): each clip frame's neighbours j-m..j+m, indices clamped to [0, last_row].

    ``features`` holds rows ``first_row ..`` of the track (a live chunk starts before the track).
    """
    j = clip * frames + np.arange(frames)[:, None] + np.arange(-m, m + 1)[None, :]
    return features[np.clip(j, 0, last_row) - first_row]


class TrackAudio:
    """The ``audio_stats`` and ``audio_features`` graphs over a track: the file path and the live path."""

    def __init__(self, stats, features, *, chunk: int, context: int, samples_per_frame: int):
        self.stats, self.features = stats, features
        self.chunk, self.context, self.spf = chunk, context, samples_per_frame
        self.input_samples = (chunk + 1) * samples_per_frame  # one frame before the chunk's first row
        self.first_frames = conv_frames(self.input_samples, CONV_LAYERS[:1])
        self.conv_frames = conv_frames(self.input_samples)
        self.hops = samples_per_frame // HOP  # wav2vec2 frames per video frame (2 at 25 fps)

    def _input(self, x: np.ndarray, start: int) -> np.ndarray:
        """(1, input_samples) of ``x`` from sample ``start``, zero outside it."""
        out = np.zeros(self.input_samples, np.float32)
        lo, hi = max(start, 0), min(start + self.input_samples, len(x))
        if hi > lo:
            out[lo - start : hi - start] = x[lo:hi]
        return out[None]

    def _sums(self, x: np.ndarray, start: int, lo: int, hi: int) -> np.ndarray:
        """Sums (2, C) of the first conv's frames K in [lo, hi) of the chunk input at sample ``start``."""
        k = start // FIRST_STRIDE + np.arange(self.first_frames)
        mask = ((k >= lo) & (k < hi)).astype(np.float32)
        return self.stats.run({"audio": self._input(x, start), "conv_mask": mask})["conv_sums"].astype(np.float64)

    def _chunk(self, x, start_row, rows, total, stats) -> np.ndarray:
        """Rows [start_row, start_row + chunk) of a track of ``total`` conv frames and ``rows`` frames."""
        a, c = start_row, self.chunk
        x0, x1, w = interpolation(total, rows)
        resample = np.zeros((c, self.conv_frames), np.float32)
        t = np.arange(a, a + c)
        inside = (t >= 0) & (t < rows)
        offset = (a - 1) * self.hops  # the chunk input starts one frame before row a
        r = np.nonzero(inside)[0]
        for index, weight in ((x0, 1 - w), (x1, w)):  # a zero weight may point one frame past the chunk
            used = r[weight[t[r]] > 0]
            np.add.at(resample, (used, index[t[used]] - offset), weight[t[used]])
        mean, var = stats
        feeds = {
            "audio": self._input(x, (a - 1) * self.spf),
            "conv_mean": mean,
            "conv_var": var,
            "resample": resample,
            "frame_mask": inside.astype(np.float32),
        }
        return self.features.run(feeds)["audio_features"]

    def _stats(self, sums: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        mean = sums[0] / count
        return mean.astype(np.float32), np.maximum(sums[1] / count - mean * mean, 0).astype(np.float32)

    def track(self, samples: np.ndarray, rows: int) -> np.ndarray:
        """The file path: (rows, layers, hidden) for a track padded to ``rows`` frames (a whole number of clips)."""
        x = normalise(samples)  # over the track itself, before the padding (as Hallo)
        length = len(x) + max(0, rows * self.spf - -(-len(x) // self.spf) * self.spf)  # Hallo's padded length
        first = conv_frames(length, CONV_LAYERS[:1])
        per = self.chunk * self.spf // FIRST_STRIDE  # first-conv frames each stats call counts
        sums = sum(self._sums(x, i * self.chunk * self.spf, i * per, min((i + 1) * per, first)) for i in range(-(-first // per)))
        stats = self._stats(sums, first)
        total = conv_frames(length)
        out = None
        step = self.chunk - 2 * self.context
        for k in range(-(-rows // step) if rows > self.chunk else 1):
            keep0, keep1 = k * step, min((k + 1) * step, rows) if rows > self.chunk else rows
            a = min(max(keep0 - self.context, 0), max(rows - self.chunk, 0))
            part = self._chunk(x, a, rows, total, stats)
            if out is None:
                out = np.empty((rows, *part.shape[1:]), np.float32)
            out[keep0:keep1] = part[keep0 - a : keep1 - a]
        return out

    def live(self, samples: np.ndarray, end: int) -> np.ndarray:
        """The live path: rows [end - chunk, end) from the samples arrived so far (rows before the track are masked)."""
        have = min(len(samples), end * self.spf)
        x = normalise(samples[:have])  # running statistics: everything up to the window's end
        a = end - self.chunk
        first = conv_frames(have, CONV_LAYERS[:1])
        start = (a - 1) * self.spf
        lo = max(0, start // FIRST_STRIDE)
        count = min(first, start // FIRST_STRIDE + self.first_frames) - lo
        stats = self._stats(self._sums(x, start, lo, first), max(count, 1))
        return self._chunk(x, a, end, conv_frames(end * self.spf), stats)
