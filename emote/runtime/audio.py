"""Audio as users have it -> float32 mono at 16 kHz (wav2vec2's rate).

WAV, FLAC, OGG and MP3 through soundfile (libsndfile 1.1+ reads MP3), other
containers (M4A, AAC, ...) through PyAV; any rate, resampled with soxr; channels
averaged. Silence is valid input. Every failure is one EmoteError naming the file.
``AudioSource`` is the pipeline's view of audio arriving over time: a whole track, or
the float32 16 kHz chunks of a live source (a TTS) read as the clips need them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..bundle import SAMPLE_RATE
from ..errors import EmoteError

QUALITY = "HQ"


def to_mono(x: np.ndarray) -> np.ndarray:
    return (x.mean(axis=1) if x.ndim == 2 else x).astype(np.float32)


def resample(x: np.ndarray, rate: int) -> np.ndarray:
    return x if rate == SAMPLE_RATE else soxr.resample(x, rate, SAMPLE_RATE, quality=QUALITY).astype(np.float32)


def _read_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(str(path)) as container:
            streams = container.streams.audio
            if not streams:
                raise EmoteError(f"{path} is not an audio file (no audio stream): expected WAV, FLAC, OGG or MP3")
            stream = streams[0]
            rate = stream.rate or stream.codec_context.sample_rate
            chunks = [f.to_ndarray() for f in container.decode(stream)]
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise EmoteError(f"{path} is not an audio file ({e.__class__.__name__}): expected WAV, FLAC, OGG or MP3") from None
    if not chunks:
        raise EmoteError(f"audio {path} holds no samples")
    data = np.concatenate([c if c.ndim == 2 else c[None] for c in chunks], axis=1)  # (channels, n) for planar
    if np.issubdtype(data.dtype, np.integer):
        data = data / float(np.iinfo(data.dtype).max)
    return data.T.astype(np.float32), rate


def load_audio(path: str | Path) -> np.ndarray:
    """float32 mono samples at 16 kHz."""
    data, rate = read_audio(path)
    return np.ascontiguousarray(resample(to_mono(data), rate))


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The file's own samples, float32 (n, channels), and its rate: the track muxed into the video.

    A file cut short of what its header promises (a partial copy or download) is an
    error, not a shorter video: decoders read what is there without complaint.
    """
    from .truncation import check_container, flac_shortfall

    path = Path(path)
    if not path.exists():
        raise EmoteError(f"audio {path} not found")
    if path.is_dir():
        raise EmoteError(f"audio {path} is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise EmoteError(f"audio {path} is empty (0 bytes)")
    check_container(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        if "unknown format" in str(e).lower() or "format not recognised" in str(e).lower():
            data, rate = _read_pyav(path)
        else:
            raise flac_shortfall(path) or EmoteError(
                f"audio {path} is unreadable ({e}): truncated, corrupt or an unsupported sample format"
            ) from None
    except (RuntimeError, ValueError) as e:
        raise EmoteError(f"audio {path} is unreadable ({e})") from None
    if data.shape[0] == 0:
        raise EmoteError(f"audio {path} holds no samples")
    if not np.all(np.isfinite(data)):
        raise EmoteError(f"audio {path} holds NaN or infinite samples")
    return data, int(rate)


class AudioSource:
    """Samples arriving over time: a whole array, or an iterator of float32 16 kHz chunks.

    ``length`` counts every sample that arrived; ``samples`` holds those from ``offset`` on:
    ``trim`` forgets what no later clip reads, so a stream of any length holds a window's worth.
    """

    def __init__(self, audio: np.ndarray | Iterable[np.ndarray]):
        if isinstance(audio, np.ndarray):
            self.chunks: Iterator[np.ndarray] = iter(())
            self.parts = [np.asarray(audio, np.float32).reshape(-1)]
            self.ended = True
        else:
            self.chunks = iter(audio)
            self.parts = []
            self.ended = False
        self.length = sum(len(p) for p in self.parts)
        self.offset = 0  # the track sample samples[0] is
        self._samples: np.ndarray | None = None

    def wait_for(self, n: int) -> bool:
        """Read chunks until ``n`` samples have arrived or the stream ends; True if n are there."""
        while self.length < n and not self.ended:
            try:
                chunk = np.asarray(next(self.chunks), np.float32).reshape(-1)
            except StopIteration:
                self.ended = True
                break
            self.parts.append(chunk)
            self.length += len(chunk)
            self._samples = None
        return self.length >= n

    @property
    def samples(self) -> np.ndarray:
        if self._samples is None:
            self._samples = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
            self.parts = [self._samples]
        return self._samples

    def trim(self, before: int) -> None:
        """Forget the samples before track sample ``before`` (no later clip reads them)."""
        drop = min(before, self.length) - self.offset
        if drop > 0:
            self._samples = self.samples[drop:]
            self.parts = [self._samples]
            self.offset += drop
