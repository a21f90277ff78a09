"""The lean runtime: a bundle, an engine backend and numpy; frames out clip by clip.

The hoisted plan of DESIGN.md, over buffers allocated once and bound once:

    per video  reference_net(reference)            -> ref keys/values
    per clip   audio_encoder(window)               -> audio tokens
               vae_encoder(previous last n frames) -> motion latents (zeros for clip 0)
               clip_condition(...)                 -> audio/motion/speed keys/values, face features
               K x denoise_step                    (x, x0 ping-pong between two fixed bindings)
               vae_decoder(x)                      -> uint8 frames, yielded at once

Each graph's outputs are bound as the next graph's inputs: no copies between
graphs, nothing allocated inside the loop. Imports numpy and the chosen engine
only: never torch, diffusers or transformers (a test checks it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EmoteError
from .clips import SAMPLE_RATE, ClipPlan, audio_window, clip_noise, frame_count, step_noise
from .manifest import Bundle
from ..engines.steploop import Step, StepPlan
from .backend_choice import resolve as resolve_backend
from .sampler import SamplerTable, make_sampler

GRAPHS = ("audio_encoder", "reference_net", "vae_encoder", "clip_condition", "denoise_step", "denoise_step_cond", "vae_decoder")


# Precisions a backend computes from the fp32 graphs by an inference-precision setting (no graphs of their own).
HINTED = {"openvino": ("bf16", "fp16")}


def graph_precision(backend: str, precision: str) -> str:
    """The bundle graphs that run for ``precision`` on ``backend``: '<graph>.<precision>' or the fp32 ones."""
    return "fp32" if precision in HINTED.get(backend, ()) else precision


def make_backend(backend: str = "onnxruntime", precision: str = "fp32", **options):
    """An engine backend by name, imported only when asked for; ``precision`` as the pipeline runs it."""
    if backend == "onnxruntime":
        from ..engines.onnxruntime import OnnxRuntimeBackend

        if precision == "bf16":
            raise EmoteError("ONNX Runtime runs bf16 only through graphs of their own, which bundles do not have: "
                             "use --backend openvino for bf16")
        return OnnxRuntimeBackend(**options)
    if backend == "openvino":
        from ..engines.openvino import OpenVINOBackend

        return OpenVINOBackend(precision=precision, **options)
    if backend == "tensorrt":
        from ..engines.tensorrt import TensorRTBackend

        return TensorRTBackend(**options)
    raise EmoteError(f"unknown backend {backend!r}: one of onnxruntime, openvino, tensorrt")


@dataclass
class Timings:
    """Seconds per stage call, appended as the pipeline runs (read by `emote bench`)."""

    calls: dict[str, list[float]] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.calls.setdefault(stage, []).append(seconds)


class AudioSource:
    """Samples arriving over time: a whole array, or an iterator of float32 16 kHz chunks."""

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

    def finish(self) -> None:
        self.wait_for(np.iinfo(np.int64).max)

    @property
    def samples(self) -> np.ndarray:
        if self._samples is None:
            self._samples = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
            self.parts = [self._samples]
        return self._samples


class Pipeline:
    """``Pipeline(bundle).stream(image, audio)`` yields uint8 frames (N, H, W, 3) per clip.

    image: a path, an RGB array of any size, or a prepared ``Portrait``.
    audio: a path, float32 samples at 16 kHz, or an iterator of such chunks (a live stream).
    """

    def __init__(
        self,
        bundle: str | Path | Bundle,
        *,
        backend: str | None = None,
        precision: str | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_steps: int | None | str = "default",
        backend_options: dict | None = None,
        overlap: bool = True,
        observe: Callable[[str, dict], None] | None = None,
        face_embedding: np.ndarray | None = None,
        face_model: str | Path | None = None,
        region_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ):
        # backend, precision: None picks the default chosen from the CPU figures (runtime/backend_choice.py:
        # OpenVINO bf16 where installed and the CPU computes bf16, else ONNX Runtime fp32)
        # face_embedding, face_model, region_weights: Hallo bundles only: the face embedding (or an
        # ONNX face-recognition model that makes it from each portrait) and Hallo's pose/face/lip
        # weights of the audio
        # observe: called as observe(graph, inputs) before every graph call, inputs being the
        # host view of the bound input buffers (calibration records them); wrapped into the
        # bound calls at bind time, so a pipeline without it runs the very same loop
        self.observe = observe
        # overlap: on a backend that queues work on a device (TensorRT), decode and copy out
        # clip i on a second stream while clip i+1 is conditioned and denoised; per-stage
        # timings are then not recorded (timing a stage would wait for it)
        self.overlap = overlap
        self._sync_stages = True
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        cfg = self.bundle.config
        self.cfg = cfg
        self.frames, self.motion = cfg["frames"], cfg["motion_frames"]
        self.resolution, self.fps = cfg["resolution"], cfg["fps"]
        backend, precision = resolve_backend(backend, precision, backend_options)
        self.precision = precision
        self.region_weights = tuple(region_weights)
        self.face_embedding, self.face_embedder = self._face_source(face_embedding, face_model)
        self.sampler = self.make_table(sampler, steps, guidance_scale, guidance_steps)
        self.timings = Timings()
        # a backend that caches compiled engines keys them by the bundle of the graph it loads
        self.backend = make_backend(backend, precision, **(backend_options or {}))
        self.graph_precision = graph_precision(backend, precision)
        self.graphs = {g: self.backend.load(g, self.bundle.graph_path(g, self._precision_of(g))) for g in GRAPHS}
        self._allocate()

    def _precision_of(self, graph: str) -> str:
        """Low-precision variants exist for the heavy graphs; graphs without one stay fp32.

        The step graph must exist at the asked precision: a bundle without it is an error.
        """
        p = self.graph_precision
        if p == "fp32":
            return "fp32"
        if graph == "denoise_step":
            self.bundle.graph(graph, p)  # raises, naming the precisions the bundle has
        return p if f"{graph}.{p}" in self.bundle.manifest["graphs"] else "fp32"

    def make_table(self, family, steps, guidance_scale, guidance_steps) -> SamplerTable:
        d = self.bundle.sampler_defaults
        try:
            return make_sampler(
                family or d["family"],
                d["steps"] if steps is None else steps,
                prediction_type=d["prediction_type"],
                spacing=d["spacing"],
                zero_snr=d["zero_snr"],
                beta_schedule=d.get("beta_schedule", "scaled_linear"),
                set_alpha_to_one=d.get("set_alpha_to_one", False),
                guidance_scale=d["guidance_scale"] if guidance_scale is None else guidance_scale,
                guidance_steps=d["guidance_steps"] if guidance_steps == "default" else guidance_steps,
            )
        except ValueError as e:
            raise EmoteError(str(e)) from None

    # -- buffers and bindings, made once ---------------------------------------------------
    def _allocate(self) -> None:
        be, g = self.backend, self.graphs
        buf: dict[str, object] = {}
        for graph in g.values():
            for name, (shape, dtype) in {**graph.inputs, **graph.outputs}.items():
                if name in ("x", "x0_prev", "x_next", "x0", "latents", "frames"):
                    continue  # ping-pong and per-graph buffers below
                if name not in buf:
                    buf[name] = be.alloc(shape, dtype)
        latent = g["denoise_step"].inputs["x"][0]
        xs = [be.alloc(latent, np.float32) for _ in range(2)]
        x0s = [be.alloc(latent, np.float32) for _ in range(2)]
        frames = be.alloc(*g["vae_decoder"].outputs["frames"])
        motion_frames = be.alloc(*g["vae_encoder"].inputs["frames"])
        self.buf, self.xs, self.x0s, self.out_frames = buf, xs, x0s, frames

        def bind(name: str, extra_in=None, extra_out=None):
            graph = g[name]
            ins = {k: buf[k] for k in graph.inputs if k in buf}
            ins.update(extra_in or {})
            outs = {k: buf[k] for k in graph.outputs if k in buf}
            outs.update(extra_out or {})
            call = graph.bind(ins, outs)
            if self.observe is None:
                return call
            observe, to_host = self.observe, be.to_host

            def observed() -> None:
                observe(name, {k: to_host(v) for k, v in ins.items()})
                call()

            return observed

        self.call_audio = bind("audio_encoder")
        self.call_reference = bind("reference_net")
        self.call_motion = bind("vae_encoder", {"frames": motion_frames}, {"latents": buf["motion_latents"]})
        self.motion_frames_buf = motion_frames
        self.call_condition = bind("clip_condition")
        # step p reads x[p], x0[p] and writes x[1-p], x0[1-p]
        self.call_step = {
            guided: [
                bind(name, {"x": xs[p], "x0_prev": x0s[p]}, {"x_next": xs[1 - p], "x0": x0s[1 - p]})
                for p in (0, 1)
            ]
            for guided, name in ((True, "denoise_step"), (False, "denoise_step_cond"))
        }
        self.call_decode = [bind("vae_decoder", {"latents": xs[p]}, {"frames": frames}) for p in (0, 1)]
        # The K step calls of a clip in order, with the sampler table whose row i is staged
        # before call i: the backend replays this plan (one CUDA graph per clip on GPU).
        table = self.sampler
        steps = tuple(
            Step(self.call_step[bool(g)][i % 2], "denoise_step" if g else "denoise_step_cond", i % 2, 1 - i % 2)
            for i, g in enumerate(table.guided)
        )
        self.step_plan = StepPlan(steps, buf["row"], table.rows, buf["noise"] if table.is_stochastic else None)
        self.loop = be.loop(self.step_plan)

    def _timed(self, stage: str, call) -> None:
        if not self._sync_stages:  # overlapping clips: waiting here to time a stage would undo the overlap
            call()
            return
        t0 = time.perf_counter()
        call()
        self.backend.synchronize()
        self.timings.add(stage, time.perf_counter() - t0)

    def _run_loop(self, clip: int, progress) -> None:
        """The clip's K steps through the backend's loop; 'denoise_loop' times all K together."""
        count = iter(range(self.step_plan.k))

        def timed(stage: str, call) -> None:
            self._timed(stage, call)
            if progress is not None:
                progress(clip, next(count))

        t0 = time.perf_counter()
        self.loop(timed=timed)  # a captured loop replays its graph and calls no one back
        if getattr(self.loop, "captured", False) and progress is not None:
            for i in count:
                progress(clip, i)
        if self._sync_stages:
            self.backend.synchronize()
            self.timings.add("denoise_loop", time.perf_counter() - t0)

    # -- inputs --------------------------------------------------------------------------
    def prepare(self, image, face_box=None):
        from .face import Portrait, prepare_portrait

        return image if isinstance(image, Portrait) else prepare_portrait(image, self.resolution, face_box=face_box)

    def plan(self, samples: int) -> ClipPlan:
        a = self.cfg["audio"]
        try:
            return ClipPlan.for_samples(
                samples, clip_frames=self.frames, motion_frames=self.motion, fps=self.fps,
                left_context=a["left_context"], lookahead=a["window"],
            )
        except ValueError as e:
            raise EmoteError(f"{e}: nothing to generate") from None

    # -- generation ----------------------------------------------------------------------
    def _face_source(self, embedding, model):
        """Hallo: the face embedding (checked now, before any work) or the face model that will make it."""
        from .face_embedding import FaceEmbedder, check_face_embedding, load_face_embedding

        dim = self.cfg.get("face_embedding_dim", 0)
        if embedding is not None and model is not None:
            raise EmoteError("give a face embedding or a face model (--face-embedding or --face-model), not both")
        if (embedding is not None or model is not None) and not dim:
            raise EmoteError(f"bundle {self.bundle.path} ({self.bundle.manifest['preset']}) takes no face embedding: "
                             "--face-embedding and --face-model are for Hallo bundles")
        if isinstance(embedding, (str, Path)):
            embedding = check_face_embedding(load_face_embedding(embedding), dim, f"--face-embedding {embedding}")
        elif embedding is not None:
            embedding = check_face_embedding(embedding, dim, "the face embedding")
        return embedding, FaceEmbedder(model) if model is not None else None

    def _bind_video(self, portrait, speed: float | None, face_embedding: np.ndarray | None) -> None:
        """Per video: the reference (and Hallo's face embedding, region masks), then the first motion frames."""
        be, b = self.backend, self.buf
        face_mask = portrait.mask
        if "face_embedding" in b:  # a Hallo bundle
            from .face_embedding import check_face_embedding
            from .regions import region_masks

            face_embedding = self.face_embedding if face_embedding is None else face_embedding
            source = "the face embedding"
            if face_embedding is None and self.face_embedder is not None:
                face_embedding, source = self.face_embedder(portrait.image, portrait.mask), f"--face-model {self.face_embedder.path} output"
            if face_embedding is None:
                raise EmoteError(f"bundle {self.bundle.path} ({self.bundle.manifest['preset']}) conditions on a face embedding "
                                 f"({b['face_embedding'].shape[1]} floats, InsightFace's for Hallo): "
                                 "pass --face-embedding FILE.npy or --face-model MODEL.onnx")
            be.from_host(b["face_embedding"], check_face_embedding(face_embedding, b["face_embedding"].shape[1], source))
            depths = sum(1 for name in b if name.startswith("region_mask_"))
            face_mask, levels = region_masks(portrait.mask, b["motion_latents"].shape[-1], depths)
            for d, mask in enumerate(levels):
                be.from_host(b[f"region_mask_{d}"], mask)
            be.from_host(b["region_scales"], np.asarray(self.region_weights, np.float32))
        elif face_embedding is not None:
            raise EmoteError(f"bundle {self.bundle.path} ({self.bundle.manifest['preset']}) takes no face embedding")
        be.from_host(b["reference"], portrait.image[None])
        be.from_host(b["face_mask"], face_mask[None, None].astype(np.float32))
        if "speed" in b:
            be.from_host(b["speed"], np.full((self.frames,), self.cfg["speed_default"] if speed is None else speed, np.float32))
        self._timed("reference_net", self.call_reference)
        if self.cfg.get("first_motion", "zeros") == "reference":  # Hallo: the first clip continues the portrait
            be.from_host(self.motion_frames_buf, np.repeat(portrait.image[None], self.motion, axis=0))
            self._timed("vae_encoder", self.call_motion)
        else:
            be.from_host(b["motion_latents"], np.zeros(b["motion_latents"].shape, np.float32))

    def stream(self, image, audio, *, seed: int = 0, face_box=None, speed: float | None = None, progress=None,
               face_embedding: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Yield each clip's frames (kept frames only) as soon as they are decoded.

        ``face_embedding``: Hallo bundles only, (512,) or (1, 512) floats (else the ``face_model``'s).
        """
        portrait = self.prepare(image, face_box)
        if isinstance(audio, (str, Path)):
            from .audio import load_audio

            audio = load_audio(audio)
        source = AudioSource(audio)
        be, b, f, n = self.backend, self.buf, self.frames, self.motion
        table = self.sampler

        self._bind_video(portrait, speed, face_embedding)

        spf = SAMPLE_RATE // self.fps
        plan_window = self.plan(max(source.length, spf))  # window geometry only; frame count known at the end
        clip = 0
        latent_shape = tuple(self.xs[0].shape)
        decode = self.call_decode[self.step_plan.result]
        pending = None  # (wait for the frames, frames to keep) of the clip decoding on the side stream
        while True:
            needed = plan_window.samples_needed(clip)
            live = source.wait_for(needed)
            total = None if live else frame_count(source.length, self.fps)
            if total == 0:
                raise EmoteError("the audio is shorter than one video frame (20 ms at 25 fps): nothing to generate")
            if total is not None and clip * f >= total:
                break
            keep = f if total is None else min(f, total - clip * f)
            # Overlap only when the whole audio is here: with a live stream, holding clip i back
            # until clip i+1's audio has arrived would delay its frames by a clip.
            self._sync_stages = not (self.overlap and be.asynchronous and source.ended)

            be.from_host(b["audio"], audio_window(source.samples, plan_window, clip))
            self._timed("audio_encoder", self.call_audio)
            if clip > 0:
                be.join()  # the previous clip's decode (side stream) wrote the motion frames
                self._timed("vae_encoder", self.call_motion)
            self._timed("clip_condition", self.call_condition)

            be.from_host(self.xs[0], clip_noise(seed, clip, latent_shape) * np.float32(table.init_scale))
            be.from_host(self.x0s[0], np.zeros(latent_shape, np.float32))
            if self.step_plan.noise is not None:
                self.loop.set_noise(np.stack([step_noise(seed, clip, i, latent_shape) for i in range(self.step_plan.k)]))
            self._run_loop(clip, progress)
            # the previous clip's frames are copied out while this clip's loop runs on the device,
            # before this clip's decode may reuse the host staging of the frames buffer
            previous = np.array(pending[0]()[: pending[1]]) if pending is not None else None
            with be.side_stream():
                self._timed("vae_decoder", decode)
                be.copy(self.motion_frames_buf, self.out_frames, start=f - n)  # the next clip's motion frames
                fetch = be.to_host_async(self.out_frames)
            pending = (fetch, keep)
            if previous is not None:
                yield previous
            if self._sync_stages:
                yield np.array(fetch()[:keep])  # the buffer is reused by the next clip
                pending = None
            clip += 1
            if total is not None and clip * f >= total:
                break
        if pending is not None:
            yield np.array(pending[0]()[: pending[1]])

    def generate(self, image, audio, **kw) -> np.ndarray:
        """All frames of the video: (round(seconds x fps), H, W, 3) uint8."""
        clips = list(self.stream(image, audio, **kw))
        return np.concatenate(clips) if clips else np.zeros((0, self.resolution, self.resolution, 3), np.uint8)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
