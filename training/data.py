"""The synthetic talking-portrait data set: procedural people speaking or singing espeak-ng audio.

One sample = one person (``training.portrait.random_params``) saying one utterance
(``training.speech.random_utterance``), rendered at 25 fps and cropped exactly as
the runtime crops a user's portrait (``emote.runtime.face.crop_portrait`` around
the face box of the neutral pose, to the model's resolution). Per frame:

- mouth opening and width: ``emote.bench.lipsync.mouth_signal`` of the audio (the
  same function scores generated videos, so the ground truth is the measure);
- blinks: a Poisson process, about one every 3.5 s, five frames each;
- head motion: yaw and pitch as sums of two slow sinusoids whose amplitude and
  frequency vary per sample (some people sit still, some move a lot); head speed
  (the speed layers' input) is the frame-to-frame pose change over MAX_SPEED.

Every sample is a pure function of (seed, index). Written to a folder:

    meta.json      seed, resolution, fps, sample count, how it was made
    frames.u8      uint8 (frames, R, R, 3), all samples back to back (a memmap)
    audio.i16      int16 16 kHz mono, all samples back to back
    index.npz      per sample: frame start/count, audio start/count, face box in the crop;
                   per frame: mouth_open, mouth_wide, eye_open, yaw, pitch, speed

    python -m training.data --out build/data/train --samples 1600 --seed 1
    python -m training.data --out build/data/heldout --samples 48 --seed 2   # held out: other people and sentences
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from emote.bench.lipsync import mouth_signal
from emote.bundle import SAMPLE_RATE
from emote.runtime.face import crop_portrait
from training.portrait import PortraitParams, face_box, random_params, render_portrait
from training.speech import random_utterance, synthesize

FPS = 25
RENDER = 192  # head-and-shoulders render; the face crop (2x the face box) is ~130 px of it
MAX_SPEED = 0.05  # pose units per frame that count as full speed (yaw 0.35 at 0.7 Hz peaks near 0.06)
BLINK = np.array([0.55, 0.1, 0.0, 0.25, 0.75], np.float32)  # eye opening over a blink's five frames
LEAD_IN = (0.0, 0.4)  # seconds of silence before and after the voice (mouth closed, still listening)


@dataclass(frozen=True)
class Sample:
    params: PortraitParams
    audio: np.ndarray  # float32, 16 kHz
    mouth_open: np.ndarray  # (n,) per frame
    mouth_wide: np.ndarray
    eye_open: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    speed: np.ndarray  # (n,) normalised head speed, 0..1
    sung: bool
    voice: str

    @property
    def frames(self) -> int:
        return len(self.mouth_open)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def make_audio(rng: np.random.Generator) -> tuple[np.ndarray, bool, str]:
    """An utterance with random silence around it, a random level and a faint noise floor."""
    u = random_utterance(rng)
    voice = synthesize(u)
    lead, tail = (int(rng.uniform(*LEAD_IN) * SAMPLE_RATE) for _ in range(2))
    audio = np.concatenate([np.zeros(lead, np.float32), voice, np.zeros(tail, np.float32)])
    audio *= np.float32(rng.uniform(0.3, 0.95) / max(float(np.abs(audio).max()), 1e-6))
    noise_db = rng.uniform(-70.0, -45.0)
    audio += (10 ** (noise_db / 20) * rng.standard_normal(len(audio))).astype(np.float32)
    return np.clip(audio, -1.0, 1.0), u.sung, u.voice


def head_motion(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(n, dtype=np.float64) / FPS
    lively = rng.random() ** 0.7 if rng.random() > 0.15 else 0.0  # 15% sit still

    def wave(amplitude):
        f = rng.uniform(0.1, 0.7, 2)
        phase = rng.uniform(0, 2 * np.pi, 2)
        w = 0.6 * np.sin(2 * np.pi * f[0] * t + phase[0]) + 0.4 * np.sin(2 * np.pi * f[1] * t + phase[1])
        return (amplitude * lively * w).astype(np.float32)

    return wave(rng.uniform(0.05, 0.35)), wave(rng.uniform(0.03, 0.25))


def blinks(rng: np.random.Generator, n: int) -> np.ndarray:
    eye = np.ones(n, np.float32)
    t = rng.uniform(0, 2.0) * FPS
    while t < n:
        i = int(t)
        k = min(len(BLINK), n - i)
        eye[i : i + k] = np.minimum(eye[i : i + k], BLINK[:k])
        t += rng.exponential(3.5 * FPS) + len(BLINK)
    return eye


def make_sample(seed: int, index: int) -> Sample:
    """Sample ``index`` of the data set ``seed``: person, audio and every per-frame control."""
    rng = sample_rng(seed, index)
    params = random_params(rng)
    audio, sung, voice = make_audio(rng)
    track = mouth_signal(audio, FPS)
    n = len(track.open)
    yaw, pitch = head_motion(rng, n)
    pose = np.stack([yaw, pitch], 1)
    step = np.linalg.norm(np.gradient(pose, axis=0), axis=1) if n > 1 else np.zeros(n)
    speed = np.clip(step / MAX_SPEED, 0.0, 1.0).astype(np.float32)
    return Sample(params, audio, track.open, track.wide, blinks(rng, n), yaw, pitch, speed, sung, voice)


def render_frames(s: Sample, resolution: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(n, R, R, 3) uint8 crops (one fixed crop: the neutral pose's face box) and the face box in the crop."""
    box = face_box(s.params, RENDER)
    out = np.empty((s.frames, resolution, resolution, 3), np.uint8)
    for i in range(s.frames):
        full = render_portrait(s.params, RENDER, s.mouth_open[i], s.mouth_wide[i], s.eye_open[i], s.yaw[i], s.pitch[i])
        out[i], mask = crop_portrait(full, box, resolution)
    ys, xs = np.nonzero(mask)
    return out, (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))


# -- the data set on disk ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Dataset:
    """A written data set, opened read-only (frames and audio are memory maps)."""

    path: Path
    meta: dict
    frames: np.ndarray  # (F, R, R, 3) uint8
    audio: np.ndarray  # (A,) int16
    index: dict[str, np.ndarray]

    @classmethod
    def open(cls, path: str | Path) -> Dataset:
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        r = meta["resolution"]
        frames = np.memmap(path / "frames.u8", np.uint8, "r", shape=(meta["total_frames"], r, r, 3))
        audio = np.memmap(path / "audio.i16", np.int16, "r", shape=(meta["total_samples"],))
        with np.load(path / "index.npz") as z:
            index = {k: z[k] for k in z.files}
        return cls(path, meta, frames, audio, index)

    def __len__(self) -> int:
        return len(self.index["frame_start"])

    def sample_frames(self, i: int) -> np.ndarray:
        s, n = self.index["frame_start"][i], self.index["frame_count"][i]
        return self.frames[s : s + n]

    def sample_audio(self, i: int) -> np.ndarray:
        s, n = self.index["audio_start"][i], self.index["audio_count"][i]
        return self.audio[s : s + n].astype(np.float32) / 32767.0

    def control(self, name: str, i: int) -> np.ndarray:
        s, n = self.index["frame_start"][i], self.index["frame_count"][i]
        return self.index[name][s : s + n]


def _render_into(args) -> tuple[int, tuple[int, int, int, int]]:
    path, seed, index, start, total, resolution = args
    s = make_sample(seed, index)
    frames, box = render_frames(s, resolution)
    mm = np.memmap(Path(path) / "frames.u8", np.uint8, "r+", shape=(total, resolution, resolution, 3))
    mm[start : start + len(frames)] = frames
    mm.flush()
    return index, box


def write_dataset(out: str | Path, samples: int, seed: int, resolution: int = 128, workers: int = 2) -> Path:
    """Generate ``samples`` samples of data set ``seed`` into ``out`` (written to a temp name, then renamed)."""
    out = Path(out)
    if (out / "meta.json").exists():
        raise FileExistsError(f"{out} already holds a data set")
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    started = time.time()
    metas = []
    for i in tqdm(range(samples), desc="audio and controls", unit="sample"):
        metas.append(make_sample(seed, i))
    counts = np.array([m.frames for m in metas])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    total = int(counts.sum())
    np.memmap(tmp / "frames.u8", np.uint8, "w+", shape=(total, resolution, resolution, 3)).flush()
    jobs = [(str(tmp), seed, i, int(starts[i]), total, resolution) for i in range(samples)]
    boxes = np.zeros((samples, 4), np.int32)
    with ProcessPoolExecutor(workers) as pool:
        for i, box in tqdm(pool.map(_render_into, jobs, chunksize=4), total=samples, desc="render", unit="sample"):
            boxes[i] = box
    audio = [np.round(m.audio * 32767).astype(np.int16) for m in metas]
    a_counts = np.array([len(a) for a in audio])
    np.concatenate(audio).tofile(tmp / "audio.i16")
    cat = lambda name: np.concatenate([getattr(m, name) for m in metas]).astype(np.float32)  # noqa: E731
    np.savez(
        tmp / "index.npz",
        frame_start=starts,
        frame_count=counts,
        audio_start=np.concatenate([[0], np.cumsum(a_counts)[:-1]]),
        audio_count=a_counts,
        face_box=boxes,
        sung=np.array([m.sung for m in metas]),
        mouth_open=cat("mouth_open"),
        mouth_wide=cat("mouth_wide"),
        eye_open=cat("eye_open"),
        yaw=cat("yaw"),
        pitch=cat("pitch"),
        speed=cat("speed"),
    )
    meta = {
        "seed": seed,
        "samples": samples,
        "resolution": resolution,
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "total_frames": total,
        "total_samples": int(a_counts.sum()),
        "render": RENDER,
        "seconds": round(total / FPS, 1),
        "sung_samples": int(sum(m.sung for m in metas)),
        "voices": sorted({m.voice for m in metas}),
        "wall_seconds": round(time.time() - started, 1),
        "made_by": f"python -m training.data --out {out.name} --samples {samples} --seed {seed}",
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="Write the synthetic talking-portrait data set.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=1600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    path = write_dataset(args.out, args.samples, args.seed, args.resolution, args.workers)
    meta = json.loads((path / "meta.json").read_text())
    print(f"wrote {path}: {meta['samples']} samples, {meta['total_frames']} frames ({meta['seconds']} s) in {meta['wall_seconds']} s")


if __name__ == "__main__":
    main()
