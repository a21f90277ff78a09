"""One portrait and one audio file to a video file: the job behind `emote generate` and `emote demo`.

Frames stream from the pipeline into the video writer clip by clip; the writer
renames its temp file into place only when every frame is written, so an
interrupted run leaves no broken file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..bundle import SAMPLE_RATE
from ..errors import EmoteError
from .pipeline import Pipeline


@dataclass(frozen=True)
class Summary:
    frames: int
    audio_seconds: float
    wall_seconds: float
    first_frame_seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def real_time_factor(self) -> float:
        """Generation seconds per second of audio (<= 1 is real time)."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else float("inf")

    def line(self) -> str:
        return (
            f"{self.frames} frames for {self.audio_seconds:.2f} s of audio in {self.wall_seconds:.2f} s: "
            f"{self.fps:.1f} frames/s, real-time factor {self.real_time_factor:.2f}, first frame after {self.first_frame_seconds:.2f} s"
        )


def retime(frames: np.ndarray, src_fps: int, dst_fps: float) -> np.ndarray:
    """Nearest-frame resampling of a clip's frames from the model's rate to the output rate."""
    if dst_fps == src_fps:
        return frames
    n = int(round(len(frames) * dst_fps / src_fps))
    idx = np.minimum((np.arange(n) * src_fps / dst_fps).astype(np.int64), len(frames) - 1)
    return frames[idx]


def generate_video(
    pipe: Pipeline,
    image: str | Path,
    audio: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    face_box=None,
    fps: float | None = None,
    png_dir: str | Path | None = None,
    npy_path: str | Path | None = None,
    progress: bool = True,
    hop: int | None = None,
    schedule: str | None = None,
) -> Summary:
    from .audio import AudioSource, read_audio
    from .video import VideoWriter, check_writable, write_npy, write_png_frames

    out = Path(out)
    check_writable(out)
    if npy_path is not None:
        check_writable(npy_path)
    out_fps = fps or pipe.fps
    if out_fps <= 0:
        raise EmoteError(f"--fps must be positive, got {out_fps}")
    track, rate = read_audio(audio)  # muxed as the user gave it; the model hears 16 kHz mono
    bar = tqdm(unit="chunk", desc="vocals", disable=not progress or pipe.vocals is None)

    def separated(done: int, total: int) -> None:  # called by the vocal model only
        bar.total = total
        bar.update(done - bar.n)

    samples = pipe.model_audio(track, rate, separated)
    bar.close()
    portrait = pipe.prepare(image, face_box)
    schedule = pipe.schedule_for(schedule, hop=hop)
    plan = pipe.plan(len(samples), pipe.windows_for(hop))
    parts, part = (plan.clips, "clip") if schedule == "clips" else (pipe.window_count(len(samples)), "window")
    bar = tqdm(total=parts * pipe.sampler.steps, unit="step", desc="generate", disable=not progress)
    collected = [] if (png_dir or npy_path) else None
    start = time.perf_counter()
    portrait = pipe.bind_portrait(portrait)  # the ReferenceNet, once: inside the timed run, as before its first clip
    first = None
    n_frames = 0
    # the track carries the audio mark whenever the frames carry the watermark (same key)
    with VideoWriter(out, out_fps, pipe.size, audio=track, audio_rate=rate, audio_mark=pipe.watermark_key) as video:

        def advance(clip: int, step: int) -> None:  # (window, step) under the window schedule
            bar.set_postfix_str(f"{part} {clip + 1}/{parts}" + (f", step {step + 1}" if part == "window" else ""), refresh=False)
            bar.update()

        for clip in pipe.clips(portrait, AudioSource(samples), seed=seed, progress=advance, hop=hop, schedule=schedule):
            if first is None:
                first = time.perf_counter() - start
            frames = retime(clip, pipe.fps, out_fps)
            video.write(frames)
            n_frames += len(frames)
            if collected is not None:
                collected.append(frames)
        # the manifest names the watermark the frames carry (signed when the writer closes)
        video.watermark = pipe.last_payload.to_bytes() if pipe.last_payload is not None else None
    wall = time.perf_counter() - start
    bar.close()
    if collected is not None:
        allf = np.concatenate(collected)
        if png_dir:
            write_png_frames(allf, png_dir)
        if npy_path:
            write_npy(allf, npy_path)
    return Summary(n_frames, len(samples) / SAMPLE_RATE, wall, first or wall)
