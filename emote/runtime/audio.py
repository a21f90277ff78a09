"""Audio as users have it -> float32 mono at 16 kHz (wav2vec2's rate).

WAV, FLAC, OGG and MP3 through soundfile (libsndfile 1.1+ reads MP3), other
containers (M4A, AAC, ...) through PyAV; any rate, resampled with soxr; channels
averaged. Silence is valid input. Every failure is one EmoteError naming the file.
Live sources (a TTS) push raw PCM chunks through ``StreamResampler``, which keeps
soxr's state between chunks so that chunked and whole-file resampling agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..errors import EmoteError

SAMPLE_RATE = 16_000
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
                f"audio {path} is unreadable ({e}): truncated, corrupt or an unsupported sample format") from None
    except (RuntimeError, ValueError) as e:
        raise EmoteError(f"audio {path} is unreadable ({e})") from None
    if data.shape[0] == 0:
        raise EmoteError(f"audio {path} holds no samples")
    if not np.all(np.isfinite(data)):
        raise EmoteError(f"audio {path} holds NaN or infinite samples")
    return data, int(rate)


def audio_duration(samples: np.ndarray) -> float:
    return len(samples) / SAMPLE_RATE


def pcm_chunks(samples: np.ndarray, chunk_ms: float = 20.0) -> Iterator[np.ndarray]:
    """Split 16 kHz samples into chunks of ``chunk_ms`` (a stand-in for a live source)."""
    n = max(1, int(round(SAMPLE_RATE * chunk_ms / 1000)))
    for i in range(0, len(samples), n):
        yield samples[i : i + n]


def to_float32_pcm(chunk: bytes | np.ndarray, channels: int = 1, dtype: str = "int16") -> np.ndarray:
    """A raw PCM chunk (bytes in ``dtype`` or an array) -> float32 mono in [-1, 1] at its own rate."""
    a = np.frombuffer(chunk, dtype=dtype) if isinstance(chunk, (bytes, bytearray, memoryview)) else np.asarray(chunk)
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    a = a.astype(np.float32)
    if channels > 1:
        if a.size % channels:
            raise EmoteError(f"PCM chunk of {a.size} samples is not a whole number of {channels}-channel frames")
        a = a.reshape(-1, channels).mean(axis=1)
    return a.reshape(-1)


class StreamResampler:
    """Chunked resampling to 16 kHz that equals whole-file resampling (soxr keeps its filter state)."""

    def __init__(self, in_rate: int):
        if in_rate <= 0:
            raise EmoteError(f"sample rate must be positive, got {in_rate}")
        self.in_rate = in_rate
        self.stream = None if in_rate == SAMPLE_RATE else soxr.ResampleStream(in_rate, SAMPLE_RATE, 1, dtype="float32", quality=QUALITY)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        return chunk if self.stream is None else self.stream.resample_chunk(chunk, last=False)

    def flush(self) -> np.ndarray:
        if self.stream is None:
            return np.zeros(0, np.float32)
        return self.stream.resample_chunk(np.zeros(0, np.float32), last=True)
