"""`emote calibrate`: the inputs of every graph over real denoising trajectories, in bounded shards.

The fp32 runtime pipeline runs over real portraits and speech with an observer
(``Pipeline(observe=...)``) that copies the inputs of each graph call. Diffusion
activations change with the timestep, so every step of every clip is recorded, with
a sampler of ``CALIB_STEPS`` steps (more timesteps than the 4-8 the runtime uses, from
t = T down to the last one) and guidance on every step.

Storage: a folder with ``calibration.json`` and ``shard-NNNNN.npz`` files of at most
``shard_bytes`` each. A tensor is stored once by content (sha1): the per-video and
per-clip inputs that every step sees again cost nothing after their first step. A
sample names, for each input of its graph, the blob that holds it. The folder is
written beside the target and renamed at the end, like a bundle. Never touches the
bundle.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import SAMPLE_RATE, Bundle, file_sha256
from ..errors import EmoteError
from ..folders import FolderKind, read_manifest, staged_folder

FORMAT = "emote-calibration/1"
MANIFEST = "calibration.json"
CALIBRATION = FolderKind("calibration folder", MANIFEST, FORMAT, "make one with `emote calibrate`")
CALIB_STEPS = 10  # sampler steps per clip while recording: 10 timesteps spread over [T, 0)
SHARD_BYTES = 256 << 20  # a shard is loaded whole by np.load members: 256 MiB keeps memory bounded
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a")
STEP_GRAPHS = ("denoise_step", "denoise_step_cond")


def blob_id(array: np.ndarray) -> str:
    """A content key: dtype, shape and bytes (the same values in another shape are another tensor)."""
    h = hashlib.sha1(f"{array.dtype.str}{array.shape}".encode())
    h.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return h.hexdigest()[:20]


class Recorder:
    """The observer: ``recorder(graph, inputs)`` keeps a copy of each new tensor and one sample entry."""

    def __init__(self, folder: Path, graphs: set[str] | None = None, shard_bytes: int = SHARD_BYTES):
        self.folder, self.graphs, self.shard_bytes = folder, graphs, shard_bytes
        self.samples: list[dict] = []
        self.blobs: dict[str, str] = {}  # blob -> shard file
        self.shards: dict[str, dict] = {}
        self.pending: dict[str, np.ndarray] = {}
        self.pending_bytes = 0
        self.run, self.clip, self.step_calls = 0, -1, 0

    def start_run(self, run: int) -> None:
        """A new pipeline run (one image and audio): clips are numbered from 0 again."""
        self.run, self.clip = run, -1

    def steps(self) -> int:
        """Step-graph calls recorded so far (guided or not)."""
        return self.step_calls

    def __call__(self, graph: str, inputs: dict[str, np.ndarray]) -> None:
        if graph == "audio_encoder":  # each clip starts with its audio window
            self.clip += 1
        if self.graphs is not None and graph not in self.graphs:
            return
        names = {}
        for name, value in inputs.items():
            key = blob_id(value)
            if key not in self.blobs and key not in self.pending:
                if self.pending and self.pending_bytes + value.nbytes > self.shard_bytes:
                    self.flush()  # a shard holds at most shard_bytes of tensors (one bigger tensor: a shard of its own)
                self.pending[key] = np.array(value)  # the buffer is overwritten by the next call
                self.pending_bytes += value.nbytes
            names[name] = key
        sample = {"graph": graph, "run": self.run, "clip": max(self.clip, 0), "inputs": names}
        if "row" in inputs:
            sample["t"] = float(inputs["row"][0])  # ROW[0] is the model's timestep
        self.samples.append(sample)
        self.step_calls += graph in STEP_GRAPHS

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"shard-{len(self.shards):05d}.npz"
        np.savez(self.folder / name, **self.pending)  # uncompressed: members load lazily, noise does not compress
        self.shards[name] = {"bytes": (self.folder / name).stat().st_size, "sha256": file_sha256(self.folder / name)}
        self.blobs.update(dict.fromkeys(self.pending, name))
        self.pending, self.pending_bytes = {}, 0


@dataclass(frozen=True)
class Source:
    image: Path
    audio: Path


def list_files(folder: str | Path, suffixes: tuple[str, ...], what: str, option: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise EmoteError(f"{option} {folder}: not a folder of {what} files")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise EmoteError(f"{option} {folder} holds no {what} files ({', '.join(suffixes)})")
    return files


def portrait_or_centre(path: Path, resolution: int):
    """The portrait with its detected face; a centred box where the detector finds none (calibration only)."""
    from ..runtime.face import prepare_portrait
    from ..runtime.image import load_image

    rgb = load_image(path)
    try:
        return prepare_portrait(rgb, resolution), False
    except EmoteError:
        h, w = rgb.shape[:2]
        side = min(h, w) // 2  # the face box of a head-and-shoulders crop (MARGIN 2 -> the whole short side)
        return prepare_portrait(rgb, resolution, face_box=((w - side) // 2, (h - side) // 2, side, side)), True


def calibrate(
    bundle_path: str | Path,
    images: str | Path,
    audio: str | Path,
    out: str | Path,
    *,
    samples: int = 64,
    steps: int | None = None,
    seed: int = 0,
    shard_bytes: int = SHARD_BYTES,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Record the inputs of every graph until ``samples`` step-graph calls are recorded; returns the folder.

    The clips are spread over the (image, audio) pairs: each run takes ``per_run`` clips
    of one pair's audio, later passes over a pair take later audio and another seed.
    """
    from tqdm import tqdm

    from ..runtime.audio import load_audio
    from ..runtime.pipeline import Pipeline

    if samples < 1:
        raise EmoteError(f"--samples {samples}: record at least one step")
    bundle = Bundle.open(bundle_path)
    if steps is None:  # 10 timesteps over [T, 0); a one-step model's trajectory is its one step
        steps = 1 if bundle.sampler.steps == 1 else CALIB_STEPS
    least = min(2, bundle.sampler.steps)
    if steps < least:
        raise EmoteError(f"--steps {steps}: at least {least} step{'s' * (least > 1)}, so that the samples span the trajectory")
    image_files = list_files(images, IMAGE_SUFFIXES, "image", "--images")
    audio_files = list_files(audio, AUDIO_SUFFIXES, "audio", "--audio")
    out = Path(out)
    with staged_folder(out, CALIBRATION, force=force) as tmp:
        recorder = Recorder(tmp, shard_bytes=shard_bytes)
        # the fp32 graphs as written: calibration records what the int8 graphs must reproduce
        pipe = Pipeline(bundle, backend="onnxruntime", precision="fp32", steps=steps, guidance_steps=None, observe=recorder)
        pairs = [
            Source(image_files[i % len(image_files)], audio_files[i % len(audio_files)])
            for i in range(max(len(image_files), len(audio_files)))
        ]
        per_run = max(1, math.ceil(samples / steps) // len(pairs))  # clips per run: every pair gets a turn
        run_samples = per_run * pipe.frames * (SAMPLE_RATE // pipe.fps)
        portraits, waves, uses, sources, centred = {}, {}, {}, [], set()
        bar = tqdm(total=samples, desc="calibrate", unit="step", disable=not progress)
        with pipe:
            while recorder.steps() < samples:
                run = len(sources)
                pair = pairs[run % len(pairs)]
                if pair.image not in portraits:
                    portraits[pair.image], guessed = portrait_or_centre(pair.image, pipe.resolution)
                    if guessed:
                        centred.add(pair.image.name)
                if pair.audio not in waves:
                    waves[pair.audio] = load_audio(pair.audio)
                full = waves[pair.audio]
                # each run of a file takes its next stretch of audio, from the start again after the last one
                start = (uses.get(pair.audio, 0) % max(1, len(full) // run_samples)) * run_samples
                uses[pair.audio] = uses.get(pair.audio, 0) + 1
                sources.append({"image": pair.image.name, "audio": pair.audio.name, "start_sample": start, "seed": seed + run})
                recorder.start_run(run)
                for _ in pipe.stream(portraits[pair.image], full[start : start + run_samples], seed=seed + run):
                    bar.update(min(samples, recorder.steps()) - bar.n)
                    if recorder.steps() >= samples:
                        break
        bar.close()
        recorder.flush()
        manifest = {
            "format": FORMAT,
            "bundle_hash": bundle.hash,
            "preset": bundle.preset,
            "graphs": {  # the fp32 graphs: the ones the pipeline ran
                name: {"sha256": spec.sha256, "inputs": [t.to_dict() for t in spec.inputs]}
                for name, spec in ((n, bundle.graph(n)) for n in bundle.names)
            },
            "sampler": {"family": pipe.sampler.family, "steps": steps, "timesteps": [float(t) for t in pipe.sampler.timesteps]},
            "sources": sources,
            "centred_faces": sorted(centred),
            "samples": recorder.samples,
            "blobs": recorder.blobs,
            "shards": recorder.shards,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if centred and progress:
        print(f"note: no face found in {', '.join(sorted(centred))}: used a centred face box")
    return out


class CalibrationSet:
    """An opened calibration folder: the recorded inputs of each graph, read lazily from its shards."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest
        self._open: dict[str, np.lib.npyio.NpzFile] = {}

    @classmethod
    def open(cls, folder: str | Path) -> CalibrationSet:
        folder = Path(folder)
        manifest = read_manifest(folder, CALIBRATION)
        for shard, info in manifest["shards"].items():
            path = folder / shard
            if not path.is_file() or path.stat().st_size != info["bytes"]:
                raise EmoteError(f"calibration folder {folder} is incomplete: {shard} is missing or truncated")
        return cls(folder, manifest)

    def check_graph(self, bundle: Bundle, graph: str) -> None:
        """The calibration data was recorded on this fp32 graph (same file content), else an error naming it."""
        rec = self.manifest["graphs"].get(graph)
        if rec is None:
            raise EmoteError(f"calibration {self.folder} has no data for graph {graph!r}")
        if rec["sha256"] != bundle.graph(graph).sha256:
            raise EmoteError(f"calibration {self.folder} was recorded on another {graph}.onnx (sha256 differs): calibrate this bundle")

    def source_graph(self, graph: str) -> str:
        """The graph whose recorded calls feed ``graph``: itself, else one with identical inputs.

        The two step graphs take the same inputs (``denoise_step_cond`` only drops the
        unconditional branch), so the guided steps recorded for one calibrate both.
        """
        if any(s["graph"] == graph for s in self.manifest["samples"]):
            return graph
        want = self.manifest["graphs"][graph]["inputs"]
        for other, rec in self.manifest["graphs"].items():
            if other != graph and rec["inputs"] == want and any(s["graph"] == other for s in self.manifest["samples"]):
                return other
        raise EmoteError(f"calibration {self.folder} recorded no calls of {graph} (nor of a graph with the same inputs)")

    def samples(self, graph: str) -> list[dict]:
        src = self.source_graph(graph)
        return [s for s in self.manifest["samples"] if s["graph"] == src]

    def feeds(self, graph: str, limit: int | None = None) -> list[dict[str, np.ndarray]]:
        """Input dicts of ``graph``'s recorded calls; ``limit`` picks that many spread over the trajectory.

        Step calls are picked by timestep, evenly from the first step to the last, and within a
        timestep evenly over the runs: an even stride over the recorded order (clip after clip of
        the same schedule) would alias with the schedule (70 calls of 10 steps, 8 picked: t = 999
        and 99 only).
        """
        entries = self.samples(graph)
        if limit is not None and limit < len(entries):
            ts = sorted({s["t"] for s in entries if "t" in s}, reverse=True)
            if ts and all("t" in s for s in entries):
                want = [ts[round(k * (len(ts) - 1) / max(1, limit - 1))] for k in range(limit)]
                picked = []
                for t in ts:
                    group = [s for s in entries if s["t"] == t]
                    idx = np.linspace(0, len(group) - 1, want.count(t)).round().astype(int) if t in want else []
                    picked += [group[i] for i in idx]
                entries = picked
            else:
                idx = np.linspace(0, len(entries) - 1, limit).round().astype(int)
                entries = [entries[i] for i in idx]
        return [{name: self.blob(key) for name, key in s["inputs"].items()} for s in entries]

    def blob(self, key: str) -> np.ndarray:
        shard = self.manifest["blobs"][key]
        if shard not in self._open:
            self._open[shard] = np.load(self.folder / shard)
        return self._open[shard][key]

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()

    def __enter__(self) -> CalibrationSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
