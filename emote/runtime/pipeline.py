"""The lean runtime: a bundle, an engine backend and numpy; frames out clip by clip.

The hoisted plan of DESIGN.md, over buffers allocated once and bound once:

    per video  the family's inputs (face mask; Hallo: face embedding, region masks)
               reference_net(reference)            -> ref keys/values
               first motion frames                 -> motion latents (the family's, else zeros)
    per video  ("track" audio windowing, Hallo's) audio_stats, audio_features over the whole track
    per clip   audio_encoder(window)               -> audio tokens (Hallo: of the track's features, sliced)
               vae_encoder(previous last n frames) -> motion latents (from clip 1 on)
               clip_condition(...)                 -> audio/motion/speed keys/values, face features
               K x denoise_step                    (x, x0 ping-pong between two fixed bindings)
               vae_decoder(x)                      -> uint8 frames, yielded at once

Each graph's outputs are bound as the next graph's inputs: no copies between
graphs, nothing allocated inside the loop. Imports numpy and the chosen engine
only: never torch, diffusers or transformers (a test checks it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import precision as policy
from ..bundle import SAMPLE_RATE, Bundle, GraphSpec
from ..engines.steploop import Step, StepPlan
from ..errors import EmoteError
from .audio import AudioSource
from .backend_choice import resolve
from .clips import ClipPlan, ClipWindows, audio_window, clip_noise, step_noise
from .context_windows import WindowMean, context_windows
from .families import family_for
from .sampler import SamplerTable, make_sampler
from .track_audio import TrackAudio, clip_windows

GRAPHS = ("audio_encoder", "reference_net", "vae_encoder", "clip_condition", "denoise_step", "denoise_step_cond", "vae_decoder")
LIVE_VOCALS = "vocal separation (--vocal-model) runs on whole tracks, not on live streams: give a live session clean voice"
TRACK_GRAPHS = ("audio_stats", "audio_features")  # "track" audio windowing: run unbound, once per video (files) or per clip (live)
# Bound to buffers of their own (the x/x0 ping-pong, the decoder's frames, the motion-frame
# input); every other tensor name is one buffer shared by the graphs that read or write it.
PER_GRAPH = ("x", "x0_prev", "x_next", "x0", "latents", "frames")


def buffer_plan(graphs: dict[str, GraphSpec]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every buffer the pipeline allocates, name -> (shape, dtype): each shared tensor once, both
    sides of the x / x0 ping-pong, the decoder's frames and the motion frames the encoder reads."""
    plan: dict[str, tuple[tuple[int, ...], str]] = {}
    for spec in graphs.values():
        for t in (*spec.inputs, *spec.outputs):
            if t.name not in PER_GRAPH:
                plan.setdefault(t.name, (t.shape, t.dtype))
    x = next(t.shape for t in graphs["denoise_step"].inputs if t.name == "x")
    for side in (0, 1):
        plan[f"x[{side}]"] = plan[f"x0[{side}]"] = (x, "float32")
    plan["frames"] = next((t.shape, t.dtype) for t in graphs["vae_decoder"].outputs if t.name == "frames")
    if "vae_encoder" in graphs:  # a model without motion frames (EchoMimic) has no encoder to feed
        plan["motion_frames"] = next((t.shape, t.dtype) for t in graphs["vae_encoder"].inputs if t.name == "frames")
    return plan


def clip_windows_of(bundle: Bundle, hop: int | None = None) -> ClipWindows:
    """How ``bundle``'s clips cut the audio, each keeping ``hop`` frames (None: whole clips); a hop the
    bundle cannot cut is an EmoteError."""
    g = bundle.geometry
    if hop is not None and hop != g.frames and g.audio_windowing == "track":
        raise EmoteError("a hop needs per-clip audio windows: this bundle's audio is the whole track's")
    try:
        return ClipWindows(g.frames, g.motion_frames, g.fps, g.left_context, g.lookahead, None if hop == g.frames else hop)
    except ValueError as e:
        raise EmoteError(str(e)) from None


SCHEDULES = ("clips", "windows")  # clip by clip (EMO's, and any live stream), or EchoMimic's context windows


def graph_names(bundle: Bundle) -> tuple[str, ...]:
    """The graphs a pipeline of ``bundle`` runs: all of GRAPHS, the motion-frame encoder only where there are motion frames."""
    return tuple(n for n in GRAPHS if n != "vae_encoder" or bundle.geometry.motion_frames)


def buffer_bytes(bundle: Bundle, backend: str, precision: str) -> int:
    """Bytes of the buffers a pipeline of ``bundle`` allocates on ``backend`` at ``precision``."""
    total = 0
    for shape, dtype in buffer_plan(policy.graphs_for(bundle, backend, precision, graph_names(bundle))).values():
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return total


def sampler_table(
    bundle: Bundle, family: str | None = None, steps: int | None = None, guidance_scale: float | None = None, guidance_steps="default"
) -> SamplerTable:
    """The sampler table of ``bundle``: what is not named is the bundle's default (``guidance_steps``
    "default": the bundle's; None: guide every step)."""
    d = bundle.sampler
    try:
        return make_sampler(
            family or d.family,
            d.steps if steps is None else steps,
            prediction_type=d.prediction_type,
            spacing=d.spacing,
            zero_snr=d.zero_snr,
            beta_schedule=d.beta_schedule,
            set_alpha_to_one=d.set_alpha_to_one,
            guidance_scale=d.guidance_scale if guidance_scale is None else guidance_scale,
            guidance_steps=d.guidance_steps if guidance_steps == "default" else guidance_steps,
        )
    except ValueError as e:
        raise EmoteError(str(e)) from None


TIMINGS_KEPT = 10_000  # calls per stage: a pipeline serving live sessions for days keeps the latest only


@dataclass
class Timings:
    """Seconds per stage call, the latest TIMINGS_KEPT of each stage, appended as the pipeline runs (read by `emote bench`)."""

    calls: dict[str, deque] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        if stage not in self.calls:
            self.calls[stage] = deque(maxlen=TIMINGS_KEPT)
        self.calls[stage].append(seconds)


MAX_SIZE = 3072  # px a side: H.264 level 5.1's largest frame, 36,864 macroblocks (what common decoders take)


def delivery_size(size: int | None, resolution: int) -> int:
    """The px a side frames are handed out at: ``size`` checked (even, for 4:2:0 video), else the model's."""
    if size is None:
        return resolution
    if not 16 <= size <= MAX_SIZE or size % 2:
        raise EmoteError(f"--size must be an even number of px from 16 to {MAX_SIZE}, got {size}")
    return size


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 frames resized bicubic to ``size`` px a side (the same array when they are that size)."""
    if frames.shape[1:3] == (size, size):
        return frames
    import cv2

    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        cv2.resize(frame, (size, size), dst=out[i], interpolation=cv2.INTER_CUBIC)
    return out


class Pipeline:
    """``Pipeline(bundle).stream(image, audio)`` yields uint8 frames (N, H, W, 3) per clip.

    image: a path, an RGB array of any size, or a prepared ``Portrait``.
    audio: a path, float32 samples at 16 kHz, or an iterator of such chunks (a live stream).

    Every frame handed out carries the invisible watermark (provenance/watermark.py), keyed by
    ``watermark_key`` (default: ``$EMOTE_WATERMARK_KEY``, else the public key), its payload the
    generator and the minute the video was started (``last_payload``). ``unmarked_research=True``
    hands out frames without it: for research on the model or the mark only.

    ``size``: frames are handed out at this many px a side (``size``; default the model's
    ``resolution``), resized bicubic from the model's frames before they are marked, so that the
    mark is made for the delivered pixels (at 512 px it also survives CRF 35 and a screen
    recording, which the 128 px mark does not: bench/RESULTS.md).
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
        watermark_key: str | None = None,
        unmarked_research: bool = False,
        size: int | None = None,
        vocal_model=None,
        **family_options,
    ):
        from ..provenance.watermark import Key

        self.watermark_key = None if unmarked_research else (Key(watermark_key) if watermark_key else Key.default())
        self.last_payload = None  # the payload of the video last streamed (None when unmarked)
        # backend, precision, backend_options: resolved by runtime/backend_choice.py (what is not
        # named is the default chosen from measured figures; options name their backend)
        # family_options: what the bundle's model family takes (runtime/families/), checked now,
        # before any work: Hallo's face_embedding (an array or a .npy path), face_model and
        # region_weights (pose, face, lip)
        # observe: called as observe(graph, inputs) before every graph call, inputs being the
        # host view of the bound input buffers (calibration records them); wrapped into the
        # bound calls at bind time, so a pipeline without it runs the very same loop
        self.observe = observe
        # vocal_model: an MDX-Net separation model (a path, e.g. Kim_Vocal_2.onnx, or a
        # VocalSeparator) run on whole tracks before the audio encoder (runtime/vocals.py)
        self.vocals = None
        if vocal_model is not None:
            from .vocals import VocalSeparator

            self.vocals = vocal_model if isinstance(vocal_model, VocalSeparator) else VocalSeparator(vocal_model)
        # overlap: on a backend that queues work on a device (TensorRT), decode and copy out
        # clip i on a second stream while clip i+1 is conditioned and denoised; per-stage
        # timings are then not recorded (timing a stage would wait for it)
        self.overlap = overlap
        self._sync_stages = True
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        g = self.bundle.geometry
        self.frames, self.motion, self.resolution, self.fps = g.frames, g.motion_frames, g.resolution, g.fps
        self.size = delivery_size(size, self.resolution)
        self.windows = clip_windows_of(self.bundle)
        self.family = family_for(self.bundle, **family_options)
        choice = resolve(backend, precision, backend_options, self.bundle)
        self.precision = choice.precision
        self.sampler = self.make_table(sampler, steps, guidance_scale, guidance_steps)
        self.timings = Timings()
        self.specs = policy.graphs_for(self.bundle, choice.backend, choice.precision, graph_names(self.bundle))
        self.backend = choice.open()
        self.graphs = {name: self.backend.load(spec) for name, spec in self.specs.items()}
        self.track: TrackAudio | None = None
        if g.audio_windowing == "track":
            stats, features = (self.backend.load(policy.graph_for(self.bundle, n, choice.backend, choice.precision)) for n in TRACK_GRAPHS)
            self.track = TrackAudio(
                stats, features, chunk=g.audio_chunk, context=g.audio_chunk_context, samples_per_frame=g.samples_per_frame
            )
        self._features: np.ndarray | None = None  # the file path's whole-track features, per stream
        self._window_loops: list | None = None  # the window schedule's one-step loops, made on first use
        self._unbound: dict[str, object] = {}  # graphs run unbound on a window schedule's file (EchoMimic's audio_segment)
        self._choice = choice
        self._allocate()

    def make_table(self, family, steps, guidance_scale, guidance_steps) -> SamplerTable:
        return sampler_table(self.bundle, family, steps, guidance_scale, guidance_steps)

    # -- buffers and bindings, made once ---------------------------------------------------
    def _allocate(self) -> None:
        be, g = self.backend, self.graphs
        buf = {name: be.alloc(shape, dtype) for name, (shape, dtype) in buffer_plan(self.specs).items()}
        xs, x0s = [buf.pop(f"x[{p}]") for p in (0, 1)], [buf.pop(f"x0[{p}]") for p in (0, 1)]
        frames, motion_frames = buf.pop("frames"), buf.pop("motion_frames", None)
        self.buf, self.xs, self.x0s, self.out_frames, self.motion_frames_buf = buf, xs, x0s, frames, motion_frames

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
        if motion_frames is not None:
            self.call_motion = bind("vae_encoder", {"frames": motion_frames}, {"latents": buf["motion_latents"]})
        self.call_condition = bind("clip_condition")
        # step p reads x[p], x0[p] and writes x[1-p], x0[1-p]
        self.call_step = {
            guided: [bind(name, {"x": xs[p], "x0_prev": x0s[p]}, {"x_next": xs[1 - p], "x0": x0s[1 - p]}) for p in (0, 1)]
            for guided, name in ((True, "denoise_step"), (False, "denoise_step_cond"))
        }
        self.call_decode = [bind("vae_decoder", {"latents": xs[p]}, {"frames": frames}) for p in (0, 1)]
        # The K step calls of a clip in order, with the sampler table whose row i is staged
        # before call i: the backend replays this plan (one CUDA graph per clip on GPU).
        table = self.sampler
        steps = tuple(
            Step(self.call_step[bool(guided)][i % 2], "denoise_step" if guided else "denoise_step_cond", i % 2, 1 - i % 2)
            for i, guided in enumerate(table.guided)
        )
        self.step_plan = StepPlan(steps, buf["row"], table.rows, buf["noise"] if table.is_stochastic else None)
        self.loop = be.loop(self.step_plan)
        if self.observe is not None:
            # observe copies every call's inputs to the host, a synchronous wait stream capture refuses
            # (and a capture attempt would call it a second time for the first clip's steps)
            self.loop.refuse("an observe callback reads every call's inputs on the host, which stream capture forbids")

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

        if isinstance(image, Portrait):
            return image
        return prepare_portrait(image, self.resolution, face_box=face_box, framing=self.family.framing)

    def model_audio(self, track: np.ndarray, rate: int = SAMPLE_RATE, progress=None) -> np.ndarray:
        """A whole track as read ((n,) or (n, channels) at ``rate``) -> what the model hears: float32
        mono at 16 kHz, the track's vocals when the pipeline has a vocal model."""
        from .audio import resample, to_mono

        if self.vocals is not None:
            return self.vocals(track, rate, progress)
        return np.ascontiguousarray(resample(to_mono(np.asarray(track, np.float32)), rate))

    def plan(self, samples: int, windows: ClipWindows | None = None) -> ClipPlan:
        """The clips of a track of ``samples`` samples (16 kHz), cut by ``windows`` (default: the bundle's)."""
        try:
            return (windows or self.windows).plan(samples, ceil=self.track is not None)  # Hallo's bundles count frames as Hallo
        except ValueError as e:
            raise EmoteError(f"{e}: nothing to generate") from None

    def schedule_for(self, schedule: str | None, live: bool = False, hop: int | None = None) -> str:
        """``schedule`` checked ("clips" or "windows"; None: the bundle's: EchoMimic's context windows for a
        whole track, clips for a live stream or a hop); one a bundle, stream or sampler cannot run is an EmoteError."""
        can = bool(self.bundle.geometry.context_overlap)
        if schedule is None:
            return "windows" if can and not live and hop is None else "clips"
        if schedule not in SCHEDULES:
            raise EmoteError(f"schedule {schedule!r}: one of {', '.join(SCHEDULES)}")
        if schedule == "windows":
            if not can:
                raise EmoteError(f"{self.bundle.describe()} has no context windows (its clips continue from motion frames): run clips")
            if live:
                raise EmoteError("context windows denoise the whole video at once: a live stream runs clips")
            if hop is not None:
                raise EmoteError("a hop cuts clips: context windows keep every frame of the video, give no hop")
            if self.sampler.is_multistep or self.sampler.is_stochastic:
                raise EmoteError(
                    f"context windows average one-step updates: sampler {self.sampler.family} "
                    f"{'keeps a history' if self.sampler.is_multistep else 'draws noise'}; run ddim or euler"
                )
        return schedule

    def window_count(self, samples: int) -> int:
        """Context windows per step over a track of ``samples`` samples (the window schedule)."""
        g, frames = self.bundle.geometry, max(self.plan(samples).frames, self.frames)
        return len(context_windows(frames, self.frames, g.context_overlap, g.context_shift, 0))

    def windows_for(self, hop: int | None) -> ClipWindows:
        """The clip windows with clips that keep ``hop`` frames each (None: whole clips, the bundle's)."""
        return self.windows if hop is None else clip_windows_of(self.bundle, hop)

    # -- generation ----------------------------------------------------------------------
    def bind_portrait(self, image, face_box=None, **inputs):
        """Per video: prepare the portrait, bind the family's inputs and run the ReferenceNet once.

        The reference keys/values stay bound until the next portrait: every ``clips`` call after
        this one (a live session's utterances) reuses them. Returns the prepared ``Portrait``.
        """
        portrait = self.prepare(image, face_box)
        be, b = self.backend, self.buf
        for name, value in self.family.video_inputs(portrait, **inputs).items():
            be.from_host(b[name], value)
        be.from_host(b["reference"], portrait.image[None])
        self._timed("reference_net", self.call_reference)
        return portrait

    def _bind_first_motion(self, portrait) -> None:
        """The first clip's motion latents: the family's first frames encoded, else zeros."""
        be, b = self.backend, self.buf
        if not self.motion:  # EchoMimic: no motion frames
            return
        first = self.family.first_motion(portrait)
        if first is None:
            be.from_host(b["motion_latents"], np.zeros(b["motion_latents"].shape, np.float32))
        else:
            be.from_host(self.motion_frames_buf, first)
            self._timed("vae_encoder", self.call_motion)

    def _track_windows(self, clip: int, source: AudioSource, live: bool) -> np.ndarray:
        """ "track" windowing: the clip frames' neighbours in the whole track's features (file), or in a chunk ending at its look-ahead (live)."""
        f, m, track = self.frames, self.windows.lookahead, self.track
        out: list[np.ndarray] = []
        if live:
            end = (clip + 1) * f + m
            self._timed("audio_features", lambda: out.append(track.live(source.samples, end)))
            return clip_windows(out[0], end - track.chunk, clip, f, m, end - 1)
        if self._features is None:
            rows = self.plan(source.length).clips * f  # Hallo pads the track to whole clips
            self._timed("audio_features", lambda: out.append(track.track(source.samples, rows)))
            self._features = out[0]
        return clip_windows(self._features, 0, clip, f, m, len(self._features) - 1)

    def _start_clip(self, clip: int, source: AudioSource, seed: int, live: bool, windows: ClipWindows) -> None:
        """Per clip: the audio window, the motion latents (from clip 1 on), the clip's conditioning, the noise."""
        be, b, table = self.backend, self.buf, self.sampler
        if self.track is None:
            self._bind_clip_audio(clip, source, windows)
            source.trim(windows.window_range(clip + 1)[0])  # a live stream keeps a window's worth
        else:  # the whole track's features (a file) or a chunk of context (live): nothing trimmed
            be.from_host(b["audio_windows"], self._track_windows(clip, source, live))
        self._timed("audio_encoder", self.call_audio)
        if clip > 0 and self.motion:
            be.join()  # the previous clip's decode (side stream) wrote the motion frames
            self._timed("vae_encoder", self.call_motion)
        self._timed("clip_condition", self.call_condition)
        shape = tuple(self.xs[0].shape)
        be.from_host(self.xs[0], clip_noise(seed, clip, shape, self.bundle.geometry.noise_clamp) * np.float32(table.init_scale))
        be.from_host(self.x0s[0], np.zeros(shape, np.float32))
        if self.step_plan.noise is not None:
            self.loop.set_noise(np.stack([step_noise(seed, clip, i, shape) for i in range(self.step_plan.k)]))

    def _bind_clip_audio(self, clip: int, source: AudioSource, windows: ClipWindows) -> None:
        """The clip's audio window and its family's per-clip inputs, into the audio encoder's buffers."""
        self.backend.from_host(self.buf["audio"], audio_window(source.samples, windows, clip, source.offset))
        for name, value in self.family.clip_inputs(windows, clip, source).items():
            self.backend.from_host(self.buf[name], value)

    def _decode(self, length: int):
        """Queue the clip's decode, the next clip's motion frames (the last of its ``length`` frames) and the
        copy out; a function that waits for the frames."""
        be, n = self.backend, self.motion
        with be.side_stream():
            self._timed("vae_decoder", self.call_decode[self.step_plan.result])
            if n:
                be.copy(self.motion_frames_buf, self.out_frames, start=length - n)
            return be.to_host_async(self.out_frames)

    def stream(
        self,
        image,
        audio: str | Path | np.ndarray | Iterable[np.ndarray],
        *,
        seed: int = 0,
        face_box=None,
        progress=None,
        hop: int | None = None,
        schedule: str | None = None,
        **inputs,
    ) -> Iterator[np.ndarray]:
        """Yield each clip's frames (kept frames only) as soon as they are decoded.

        ``inputs``: per-video inputs of the bundle's family (EMO: ``speed``; Hallo: ``face_embedding``,
        (512,) or (1, 512) floats, else the pipeline's own or its face model's). A whole track (a
        path, or 16 kHz samples) goes through the vocal model when the pipeline has one; a live
        stream (an iterator of chunks) cannot, and is refused then. ``hop``: frames each clip keeps;
        ``schedule``: "clips" or "windows" (``clips``).
        """
        if isinstance(audio, (str, Path)):
            from .audio import read_audio

            audio = self.model_audio(*read_audio(audio))
        elif isinstance(audio, np.ndarray):
            audio = self.model_audio(audio) if self.vocals is not None else audio
        elif self.vocals is not None:
            raise EmoteError(LIVE_VOCALS)
        portrait = self.bind_portrait(image, face_box, **inputs)
        yield from self.clips(portrait, AudioSource(audio), seed=seed, progress=progress, hop=hop, schedule=schedule)

    def _marker(self):
        """The watermark embedder of one video (its payload: now), or None when unmarked."""
        if self.watermark_key is None:
            self.last_payload = None
            return None
        from ..provenance.payload import Payload
        from ..provenance.watermark import Embedder

        self.last_payload = Payload.now()
        return Embedder(self.watermark_key, self.last_payload, fps=self.fps)

    def clips(
        self, portrait, source: AudioSource, *, seed: int = 0, progress=None, hop: int | None = None, schedule: str | None = None
    ) -> Iterator[np.ndarray]:
        """One video's clips from ``source`` over the portrait bound last (``bind_portrait``), marked
        (the watermark, one payload per call) unless the pipeline is ``unmarked_research``.

        ``progress(clip, step)`` is called after every step (at the end of the clip when the loop
        is one captured graph); an exception it raises abandons the video there. ``hop``: frames
        each clip keeps (motion frames .. a clip; default a whole clip): a clip waits for that much
        audio and the look-ahead only, for clip/hop times the compute (runtime.clips): live latency.
        ``schedule`` (``schedule_for``): "windows" runs EchoMimic's context windows over the whole
        track (its frames come once every step is done, clip by clip as they are decoded; ``progress``
        is then called as (window, step) after every window of every step).
        """
        windows = self.windows_for(hop)
        if self.schedule_for(schedule, not source.ended, hop) == "windows":
            made = self._window_video(source, seed, progress)
        else:
            made = self._unmarked_clips(portrait, source, seed, progress, windows)
        mark = self._marker()
        for frames in made:
            frames = resize_frames(frames, self.size)
            yield frames if mark is None else mark.mark(frames, portrait.mask)

    def _unmarked_clips(self, portrait, source: AudioSource, seed: int, progress, windows: ClipWindows) -> Iterator[np.ndarray]:
        """The clips as the model makes them (the motion frames fed back stay unmarked: these are copies)."""
        live, self._features = not source.ended, None  # a live stream's clips cannot wait for the whole track
        self._bind_first_motion(portrait)
        plan: ClipPlan | None = None  # known once the whole audio is here
        pending = None  # (wait for the frames, frames to keep) of the clip decoding on the side stream
        clip = 0
        while plan is None or clip < plan.clips:
            if not source.wait_for(windows.samples_needed(clip)) and plan is None:
                plan = self.plan(source.length, windows)
                if clip >= plan.clips:
                    break
            keep = windows.step if plan is None else plan.kept(clip)
            # Overlap only when the whole audio is here: with a live stream, holding clip i back
            # until clip i+1's audio has arrived would delay its frames by a clip.
            self._sync_stages = not (self.overlap and self.backend.asynchronous and source.ended)
            self._start_clip(clip, source, seed, live, windows)
            self._run_loop(clip, progress)
            # the previous clip's frames are copied out while this clip's loop runs on the device,
            # before this clip's decode may reuse the host staging of the frames buffer
            previous = np.array(pending[0]()[: pending[1]]) if pending is not None else None
            pending = (self._decode(windows.step), keep)
            if previous is not None:
                yield previous
            if self._sync_stages:
                yield np.array(pending[0]()[:keep])  # the buffer is reused by the next clip
                pending = None
            clip += 1
        if pending is not None:
            yield np.array(pending[0]()[: pending[1]])

    def _window_video(self, source: AudioSource, seed: int, progress) -> Iterator[np.ndarray]:
        """EchoMimic's context windows (runtime/context_windows.py) over the portrait bound last: every frame's
        audio tokens first (``_file_tokens``), the whole video's latents (each clip's noise, as clips draw it),
        each step window by window (the audio keys/values per window, the reference's bound once) with the
        windows' x_{t-1} averaged per frame; then decoded clip by clip."""
        be, b, g, f = self.backend, self.buf, self.bundle.geometry, self.frames
        plan = self.plan(source.length)
        length = max(plan.frames, f)  # a video shorter than a window: one window over a padded clip
        shape = tuple(self.xs[0].shape[1:])
        tokens = self._file_tokens(source, plan, length)
        noise = np.concatenate([clip_noise(seed, c, (f, *shape), g.noise_clamp) for c in range(plan.clips)])[:length]
        x, zeros = noise * np.float32(self.sampler.init_scale), np.zeros((f, *shape), np.float32)
        be.from_host(self.x0s[0], zeros)  # x0_prev: unread by one-step samplers, and no step writes this side
        for step, loop in enumerate(self._one_step_loops()):
            mean = WindowMean(x.shape)
            for w, index in enumerate(context_windows(length, f, g.context_overlap, g.context_shift, step)):
                be.from_host(b["audio_tokens"], tokens[index])
                self._timed("clip_condition", self.call_condition)
                be.from_host(self.xs[0], x[index])
                loop(timed=self._timed)
                mean.add(index, be.to_host(self.xs[1]))
                if progress is not None:
                    progress(w, step)
            x = mean.mean()
        for clip in range(plan.clips):
            latents = x[clip * f : clip * f + f]
            be.from_host(self.xs[0], np.concatenate([latents, zeros[len(latents) :]]))
            self._timed("vae_decoder", self.call_decode[0])
            yield np.array(be.to_host(self.out_frames)[: plan.kept(clip)])

    def _file_tokens(self, source: AudioSource, plan: ClipPlan, length: int) -> np.ndarray:
        """(length, T, D): every frame's audio tokens of a whole file, as the family encodes files (EchoMimic: its
        30 s whisper segments), else from the clips' audio windows, as clips hear them."""
        tokens = self.family.file_tokens(source.samples, length, self._run_unbound)
        if tokens is not None:
            return tokens
        clips = []
        for clip in range(plan.clips):
            self._bind_clip_audio(clip, source, self.windows)
            self._timed("audio_encoder", self.call_audio)
            clips.append(self.backend.to_host(self.buf["audio_tokens"]).copy())
        return np.concatenate(clips)[:length]

    def _run_unbound(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Graph ``name`` once on host arrays (loaded on first use, kept): timed as its own stage."""
        if name not in self._unbound:
            self._unbound[name] = self.backend.load(policy.graph_for(self.bundle, name, self._choice.backend, self.precision))
        out: list[dict[str, np.ndarray]] = []
        self._timed(name, lambda: out.append(self._unbound[name].run(feeds)))
        return out[0]

    def _one_step_loops(self) -> list:
        """Step i of the sampler alone, x[0] -> x[1], as a loop of its own (one CUDA graph each on GPU): the
        window schedule runs step i once per window."""
        if self._window_loops is None:
            table, loops = self.sampler, []
            for i, guided in enumerate(table.guided):
                name = "denoise_step" if guided else "denoise_step_cond"
                loop = self.backend.loop(
                    StepPlan((Step(self.call_step[bool(guided)][0], name, 0, 1),), self.buf["row"], table.rows[i : i + 1])
                )
                if self.observe is not None:
                    loop.refuse("an observe callback reads every call's inputs on the host, which stream capture forbids")
                loops.append(loop)
            self._window_loops = loops
        return self._window_loops

    def generate(self, image, audio, **kw) -> np.ndarray:
        """All frames of the video: (round(seconds x fps), H, W, 3) uint8."""
        clips = list(self.stream(image, audio, **kw))
        return np.concatenate(clips) if clips else np.zeros((0, self.size, self.size, 3), np.uint8)

    def close(self) -> None:
        self.backend.close()  # and the loops it made

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
