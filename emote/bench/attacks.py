"""What a re-upload does to a video or its sound, in memory: H.264 and AAC round trips through PyAV.

The watermark's harnesses (bench/watermark.py, bench/watermark_scale.py) and its tests attack
marked media with these.
"""

from __future__ import annotations

import io

import numpy as np

from ..bundle import SAMPLE_RATE


def h264(frames: np.ndarray, crf: int, fps: int = 25) -> np.ndarray:
    """uint8 RGB frames (N, H, W, 3) through libx264 at ``crf`` (yuv420p, preset veryfast) and back, cut to even sides."""
    import av

    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        v = c.add_stream("libx264", rate=fps)
        v.height, v.width, v.pix_fmt = h, w, "yuv420p"
        v.options = {"crf": str(crf), "preset": "veryfast"}
        _encode_all(c, v, (_video_frame(av, f[:h, :w], i) for i, f in enumerate(frames)))
    buf.seek(0)
    with av.open(buf) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def aac(samples: np.ndarray, rate: int, kbps: int = 64) -> np.ndarray:
    """Mono float32 at ``rate`` through AAC at ``kbps`` (48 kHz) and back at the model's rate (SAMPLE_RATE, 16 kHz):
    a re-encode and two resamplings."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("aac", rate=48000, layout="mono")
        s.bit_rate = kbps * 1000
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32).reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        _encode_all(c, s, av.AudioResampler(format="fltp", layout="mono", rate=48000).resample(frame))
    buf.seek(0)
    with av.open(buf) as c:
        back = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        return np.concatenate([rf.to_ndarray().ravel() for f in c.decode(audio=0) for rf in back.resample(f)])


def _video_frame(av, rgb: np.ndarray, pts: int):
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame.pts = pts
    return frame


def _encode_all(container, stream, frames) -> None:
    """Encode every frame into the stream, then flush the encoder, muxing each packet."""
    for frame in [*frames, None]:
        for packet in stream.encode(frame):
            container.mux(packet)
