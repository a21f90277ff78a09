"""Video out: MP4 (H.264 + AAC) through PyAV, frames arriving clip by clip; PNG and NPY too.

Every writer writes to a temporary file beside the target and renames it into
place only when complete: an interrupted run leaves neither a broken file nor
the temporary one.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..bundle import SAMPLE_RATE
from ..errors import EmoteError
from ..folders import atomic_path, staged_dir

AUDIO_RATE = 48_000  # AAC's usual rate; the 16 kHz track is resampled to it


def check_writable(path: str | Path) -> None:
    """Fail before any work if ``path`` cannot be written: a folder there, or a missing or read-only parent."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise EmoteError(f"cannot write {path}: it is a directory")
    if not parent.is_dir():
        raise EmoteError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise EmoteError(f"cannot write {path}: directory {parent} is not writable")


class VideoWriter:
    """``with VideoWriter("out.mp4", 25, 512, audio=samples) as v: v.write(frames)`` (uint8 (N, H, W, 3)).

    ``audio``: float32 samples at ``audio_rate``, (n,) or (n, channels): the user's own track
    (its rate and stereo kept, not the model's 16 kHz mono), encoded as AAC at 48 kHz.
    ``c2pa``: sign the finished file with a C2PA manifest saying it was made by a trained model
    (provenance/manifest.py); ``watermark``: the payload bytes of the watermark its frames carry
    (named in the manifest's soft binding), None when they carry none. ``audio_mark``: the key of
    the audio mark (provenance/audio_mark.py) put into the track before it is encoded, None for none.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        size: int | tuple[int, int],
        audio: np.ndarray | None = None,
        crf: int = 18,
        audio_rate: int = SAMPLE_RATE,
        c2pa: bool = True,
        watermark: bytes | None = None,
        audio_mark=None,
    ):
        self.c2pa, self.watermark = c2pa, watermark
        self.path = Path(path)
        check_writable(self.path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.width, self.height = (size, size) if isinstance(size, int) else size
        if audio is not None:
            audio = np.asarray(audio, np.float32)
            audio = audio[:, None] if audio.ndim == 1 else audio
            if audio.shape[1] > 2:  # AAC in MP4 plays everywhere as mono or stereo: fold the rest down
                audio = audio.mean(axis=1, keepdims=True)
            if audio_mark is not None and len(audio):
                from ..provenance.audio_mark import embed

                audio = embed(audio, audio_rate, audio_mark)
        self.audio, self.audio_rate = audio, audio_rate
        self.crf = crf
        self.frames = 0
        self.container = None

    def __enter__(self) -> VideoWriter:
        import av

        self._atomic = atomic_path(self.path)  # renamed onto path when every frame is written
        self.tmp = self._atomic.__enter__()
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        v = self.container.add_stream("libx264", rate=self.fps)
        v.width, v.height, v.pix_fmt = self.width, self.height, "yuv420p"
        v.options = {"crf": str(self.crf), "preset": "veryfast"}
        v.codec_context.time_base = 1 / self.fps
        self.video = v
        self.audio_stream = None
        if self.audio is not None and len(self.audio):
            self.layout = "stereo" if self.audio.shape[1] == 2 else "mono"
            self.audio_stream = self.container.add_stream("aac", rate=AUDIO_RATE, layout=self.layout)
        return self

    def write(self, frames: np.ndarray) -> None:
        import av

        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (N, {self.height}, {self.width}, 3), got {frames.dtype}{list(frames.shape)}")
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = self.frames
            self.frames += 1
            for packet in self.video.encode(vf):
                self.container.mux(packet)

    def _mux_audio(self) -> None:
        import av
        import soxr

        samples = self.audio
        if self.audio_rate != AUDIO_RATE:
            samples = soxr.resample(samples, self.audio_rate, AUDIO_RATE).astype(np.float32)
        samples = np.ascontiguousarray(samples.reshape(len(samples), -1))
        resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=AUDIO_RATE)
        step = 1024 * 16
        for i in range(0, len(samples), step):
            # packed float: one row of interleaved channels
            frame = av.AudioFrame.from_ndarray(samples[i : i + step].reshape(1, -1), format="flt", layout=self.layout)
            frame.sample_rate, frame.pts = AUDIO_RATE, i
            for rf in resampler.resample(frame):
                for packet in self.audio_stream.encode(rf):
                    self.container.mux(packet)
        for rf in resampler.resample(None):
            for packet in self.audio_stream.encode(rf):
                self.container.mux(packet)
        for packet in self.audio_stream.encode(None):
            self.container.mux(packet)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for packet in self.video.encode(None):
                    self.container.mux(packet)
                if self.audio_stream is not None:
                    self._mux_audio()
            self.container.close()
            if exc_type is None and self.c2pa:
                self._sign()
        except BaseException as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)  # the temporary file goes; the target stays as it was
            raise
        self._atomic.__exit__(exc_type, exc, tb)

    def _sign(self) -> None:
        """The temporary file replaced by its signed copy (still under the temporary name)."""
        from ..provenance.manifest import sign_mp4

        signed = self.tmp.with_name(self.tmp.stem + ".signed.mp4")
        try:
            sign_mp4(self.tmp, signed, self.path.name, self.watermark)
            os.replace(signed, self.tmp)
        finally:
            signed.unlink(missing_ok=True)


def write_png_frames(frames: np.ndarray, folder: str | Path) -> None:
    """frame_000000.png, ... in ``folder`` (created); written into a temp folder renamed at the end."""
    from PIL import Image

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise EmoteError(f"cannot write PNG frames to {folder}: the folder is not empty")
    check_writable(folder.parent / f".{folder.name}")
    with staged_dir(folder) as tmp:
        for i, f in enumerate(frames):
            Image.fromarray(f).save(tmp / f"frame_{i:06d}.png")


def write_npy(frames: np.ndarray, path: str | Path) -> None:
    check_writable(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, frames)


def probe_video(path: str | Path) -> dict:
    """What a player sees: frames, fps, size, codecs, audio duration (decoded, not guessed)."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        info = {
            "frames": frames,
            "fps": float(v.average_rate) if v.average_rate else 0.0,
            "width": v.codec_context.width,
            "height": v.codec_context.height,
            "video_codec": v.codec_context.name,
            "video_streams": len(c.streams.video),
            "audio_streams": len(c.streams.audio),
            "audio_codec": None,
            "audio_seconds": 0.0,
        }
    if info["audio_streams"]:
        with av.open(str(path)) as c:
            a = c.streams.audio[0]
            n = sum(fr.samples for fr in c.decode(a))
            info["audio_codec"] = a.codec_context.name
            info["audio_seconds"] = n / a.codec_context.sample_rate
    return info
