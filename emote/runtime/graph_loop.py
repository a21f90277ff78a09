"""The clip loop over one "run a graph" callable: for servers that call each graph as a separate model.

``Pipeline`` binds every graph once to buffers it owns and replays the step loop on
them (one CUDA graph on TensorRT). A Triton model repository (``emote export-triton``)
runs each graph as its own model, reached by a request that carries host arrays in and
out; this module is the same hoisted plan for that contract:

    run(graph, feeds) -> outputs      host numpy arrays, by the graph's tensor names

It uses the runtime's own pieces, not copies of them: the buffer plan (which tensor each
graph reads and writes), the family's per-video inputs and first motion frames, the
clip windows and noise, the sampler table, the watermark. A test checks its frames
against ``Pipeline``'s on the same bundle, bit for bit. Knows nothing of Triton.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from .. import precision as policy
from ..bundle import Bundle, GraphSpec
from ..errors import EmoteError
from .clips import ClipPlan, ClipWindows, audio_window, clip_noise, step_noise
from .families import Family
from .pipeline import GRAPHS, PER_GRAPH, buffer_plan
from .sampler import SamplerTable

RunGraph = Callable[[str, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def windows_of(bundle: Bundle) -> ClipWindows:
    g = bundle.geometry
    return ClipWindows(clip_frames=g.frames, motion_frames=g.motion_frames, fps=g.fps, left_context=g.left_context, lookahead=g.lookahead)


class GraphLoop:
    """One bundle's clip loop, each graph call going through ``run``; ``stream`` yields each clip's frames.

    ``specs``: the graphs that run, by name (``precision.graphs_for``): their tensor names decide
    what each call is fed and what its outputs replace.
    """

    def __init__(self, bundle: Bundle, specs: Mapping[str, GraphSpec], table: SamplerTable, family: Family, run: RunGraph):
        missing = [n for n in GRAPHS if n not in specs]
        if missing:
            raise ValueError(f"the clip loop needs the graphs {', '.join(missing)}")
        if bundle.geometry.audio_windowing != "clip":  # Hallo's whole-track features: Pipeline only, for now
            raise EmoteError(
                f"bundle {bundle.path}: the served clip loop runs per-clip audio windows, not {bundle.geometry.audio_windowing!r} windowing"
            )
        self.bundle, self.specs, self.table, self.family, self.run = bundle, dict(specs), table, family, run
        self.windows = windows_of(bundle)
        self.plan_shapes = buffer_plan(self.specs)

    @classmethod
    def for_precision(cls, bundle: Bundle, precision: str, table: SamplerTable, family: Family, run: RunGraph) -> GraphLoop:
        """The graphs of ``precision`` as ONNX Runtime or TensorRT run them (the bundle's variant, else fp32)."""
        return cls(bundle, policy.graphs_for(bundle, "onnxruntime", precision, GRAPHS), table, family, run)

    def _call(self, tensors: dict[str, np.ndarray], name: str, feeds: Mapping[str, np.ndarray] | None = None) -> Mapping[str, np.ndarray]:
        """Run graph ``name`` on the shared tensors (``feeds`` for its own inputs); its shared outputs replace theirs."""
        spec, feeds = self.specs[name], feeds or {}
        out = self.run(name, {t.name: feeds[t.name] if t.name in feeds else tensors[t.name] for t in spec.inputs})
        for t in spec.outputs:
            if t.name not in PER_GRAPH:
                tensors[t.name] = out[t.name]
        return out

    def stream(self, portrait, samples: np.ndarray, *, seed: int = 0, marker=None, **inputs) -> Iterator[np.ndarray]:
        """Each clip's kept frames, uint8 (N, H, W, 3), of a whole track of 16 kHz float32 ``samples``.

        ``marker``: a ``provenance.watermark.Embedder`` (frames handed out marked, as ``Pipeline``
        marks them), or None for the unmarked frames. ``inputs``: the family's per-video inputs.
        """
        try:
            plan: ClipPlan = self.windows.plan(len(samples))
        except ValueError as e:
            raise EmoteError(f"{e}: nothing to generate") from None
        f, n, table = self.windows.clip_frames, self.windows.motion_frames, self.table
        # every shared tensor starts as the zeros Pipeline allocates (the step's noise stays zero for
        # deterministic samplers)
        tensors = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.plan_shapes.items()}
        tensors.update(self.family.video_inputs(portrait, **inputs))
        tensors["reference"] = portrait.image[None]
        self._call(tensors, "reference_net")
        first = self.family.first_motion(portrait)
        motion = np.zeros(self.plan_shapes["motion_frames"][0], np.uint8) if first is None else first
        if first is not None:
            tensors["motion_latents"] = self._call(tensors, "vae_encoder", {"frames": motion})["latents"]
        shape = self.plan_shapes["x[0]"][0]
        for clip in range(plan.clips):
            tensors["audio"] = audio_window(samples, self.windows, clip)
            self._call(tensors, "audio_encoder")
            if clip > 0:
                tensors["motion_latents"] = self._call(tensors, "vae_encoder", {"frames": motion})["latents"]
            self._call(tensors, "clip_condition")
            x = clip_noise(seed, clip, shape, self.bundle.geometry.noise_clamp) * np.float32(table.init_scale)
            x0 = np.zeros(shape, np.float32)
            for i, guided in enumerate(table.guided):
                tensors["row"] = np.ascontiguousarray(table.rows[i], np.float32)
                if table.is_stochastic:
                    tensors["noise"] = step_noise(seed, clip, i, shape)
                out = self._call(tensors, "denoise_step" if guided else "denoise_step_cond", {"x": x, "x0_prev": x0})
                x, x0 = out["x_next"], out["x0"]
            frames = np.asarray(self._call(tensors, "vae_decoder", {"latents": x})["frames"])
            motion = frames[f - n : f].copy()  # the next clip's motion frames: unmarked, as the model made them
            kept = frames[: plan.kept(clip)]
            yield kept.copy() if marker is None else marker.mark(kept, portrait.mask)
