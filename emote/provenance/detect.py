"""`emote detect`: is this video marked as made by emote? The manifest and the watermark, read from any file.

A file's verdict: "marked" when its C2PA manifest is valid and says trainedAlgorithmicMedia, or
when the watermark's or the audio mark's p-value is below watermark.DETECT_P (the audio read from
its first audio stream, resampled to 16 kHz mono); "not marked" otherwise; "unreadable"
when no video stream decodes. The watermark is read from the luma of the first MAX_FRAMES
frames, of any size and any codec PyAV decodes; the manifest from MP4/MOV files (ISO BMFF, where
C2PA puts it in video).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio_mark import DETECT_RATE, AudioDetection
from .audio_mark import detect as detect_audio
from .manifest import ManifestReport, read_manifest
from .watermark import ClipSum, Detection, Key

MAX_FRAMES = 1500  # 60 s at 25 fps: beyond that the sum gains little and detection time grows


@dataclass(frozen=True)
class FileReport:
    path: str
    readable: bool
    error: str | None
    manifest: ManifestReport | None
    watermark: Detection | None
    audio: AudioDetection | None = None  # None: no audio stream

    @property
    def marked(self) -> bool:
        by_manifest = self.manifest is not None and self.manifest.state == "valid" and self.manifest.generated
        by_audio = self.audio is not None and self.audio.marked
        return bool(by_manifest or (self.watermark is not None and self.watermark.marked) or by_audio)

    def as_dict(self) -> dict:
        return {
            "file": self.path,
            "verdict": "unreadable" if not self.readable else ("marked" if self.marked else "not marked"),
            "error": self.error,
            "manifest": self.manifest.as_dict() if self.manifest else None,
            "watermark": self.watermark.as_dict() if self.watermark else None,
            "audio": self.audio.as_dict() if self.audio else None,
        }

    def lines(self) -> list[str]:
        if not self.readable:
            return [f"{self.path}: unreadable: {self.error}"]
        m, w = self.manifest, self.watermark
        out = [f"{self.path}: {'MARKED as generated' if self.marked else 'no mark found'}"]
        if m is not None:
            what = f"{m.state}" + (f", trainedAlgorithmicMedia by {m.generator}" if m.generated else "")
            notes = f" ({', '.join(m.detail)})" if m.detail else ""
            out.append(f"  C2PA manifest: {what}{notes}")
        if w is not None:
            payload = (
                f", payload {w.payload.describe()['generator']} at {w.payload.describe()['time']}" if w.payload else ", no payload decoded"
            )
            out.append(
                f"  watermark: {'found' if w.marked else 'not found'} (z = {w.z:.1f}, p = {w.p_value:.2g} over {w.frames} frames{payload})"
            )
        a = self.audio
        if a is not None:
            out.append(f"  audio mark: {'found' if a.marked else 'not found'} (z = {a.z:.1f}, p = {a.p_value:.2g} over {a.seconds:.1f} s)")
        else:
            out.append("  audio mark: no audio stream")
        return out


def read_audio(path: str | Path, max_seconds: float = MAX_FRAMES / 25.0) -> np.ndarray | None:
    """The first audio stream as 16 kHz mono float32 (its first ``max_seconds``), None without one."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=DETECT_RATE)
        chunks, n = [], 0
        for frame in container.decode(container.streams.audio[0]):
            for rf in resampler.resample(frame):
                chunks.append(rf.to_ndarray().ravel())
                n += len(chunks[-1])
            if n >= max_seconds * DETECT_RATE:
                break
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def read_luma(path: str | Path, max_frames: int = MAX_FRAMES) -> ClipSum:
    """The whitened luma of the file's first video stream summed (watermark.ClipSum); raises av's errors."""
    import av

    total = ClipSum()
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            # the frame's time places it in the mark's sign sequence (an unknown time: its index at 25 fps)
            t = frame.time if frame.time is not None else total.frames / 25.0
            total.add(frame.to_ndarray(format="gray"), t)
            if total.frames >= max_frames:
                break
    if total.frames == 0:
        raise ValueError("no frame decodes")
    return total


def detect_file(path: str | Path, key: Key | None = None) -> FileReport:
    import av

    path = Path(path)
    if not path.is_file():
        return FileReport(str(path), False, "no such file", None, None)
    try:
        clip = read_luma(path)
    except (av.FFmpegError, ValueError, OSError) as e:
        return FileReport(str(path), False, str(e).splitlines()[0] if str(e) else type(e).__name__, None, None)
    bmff = path.suffix.lower() in (".mp4", ".m4v", ".mov")
    manifest = read_manifest(path) if bmff else ManifestReport("absent", False, None, None, ["not an MP4/MOV container"])
    try:
        track = read_audio(path)
    except (av.FFmpegError, ValueError, OSError):
        track = None  # an audio stream that does not decode: the video's verdict stands alone
    audio = detect_audio(track, DETECT_RATE, key) if track is not None else None
    return FileReport(str(path), True, None, manifest, clip.detect(key), audio)
