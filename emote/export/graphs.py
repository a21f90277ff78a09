"""The bundle's graphs as torch modules with named, static inputs and outputs.

One wrapper per ONNX file. Each knows its input specs (name, shape, dtype), so
export, ``emote verify`` and the tests share one definition of every tensor that
crosses a graph boundary. Images cross as uint8 NHWC (what users and video
encoders have); the conversion to [-1, 1] floats happens inside the graphs.

| graph              | inputs                                              | outputs                      |
| ------------------ | --------------------------------------------------- | ---------------------------- |
| audio_encoder      | audio (1, S)                                        | audio_tokens (f, T, D)       |
|                    | ("track" windowing: audio_windows (f, 2m+1, L, H))  |                              |
| audio_stats        | "track": audio (1, S_c), conv_mask (K,)             | conv_sums (2, C)             |
| audio_features     | "track": audio, conv_mean, conv_var, resample, frame_mask | audio_features (c, L, H) |
| audio_segment      | whisper: mel (1, 80, 3000), a 30 s segment's log-mel | segment_states (1500, 5, D) |
| reference_net      | reference (1, H, W, 3) uint8                        | ref_k_i, ref_v_i             |
| vae_encoder        | frames (n, H, W, 3) uint8                           | latents (n, 4, h, w)         |
| clip_condition     | audio_tokens, motion_latents, face_mask, speed      | audio_k_i, audio_v_i, motion_k_j, motion_v_j, speed_k_j, speed_v_j, face |
| denoise_step       | x, row, x0_prev, noise + all keys/values and face   | x_next, x0                   |
| denoise_step_cond  | the same, without the unconditional branch          | x_next, x0                   |
| vae_decoder        | latents (f, 4, h, w)                                | frames (f, H, W, 3) uint8    |

Bundles of "track" audio windowing (Hallo's: ``runtime/track_audio.py``) add ``audio_stats`` and
``audio_features``, wav2vec2 over the whole track in static chunks of c frames, run once per video;
their ``audio_encoder`` is then the projection alone, of each frame's neighbours. Whisper bundles
(EchoMimic's) add ``audio_segment``: a file's tokens under the window schedule, as EchoMimic makes them.

The sampler row is ``emote.runtime.sampler.ROW``: (t, a_x, a_o, c_x, c_0, c_p, c_n, g).

Hallo models (``uncond_branch="hallo"``) take more, all filled by the runtime once per video:
``face_embedding`` (1, E) into reference_net (which adds ``embed_k_i``/``embed_v_i``, the
face tokens' attn2 keys/values) and clip_condition (whose ReferenceNet pass on the motion
frames attends to it); ``region_mask_d`` (3, s*s) per depth and ``region_scales`` (3,) into
the step graphs. clip_condition then gives ``audio_{k,v}_{i}_{r}`` (audio module i, region r),
``motion_{q,k,v,h}_j`` and ``uncond_motion_{q,k,v,h}_j`` (the unconditional branch's view of
the motion frames), ``face``; it takes no speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..bundle import SAMPLE_RATE
from ..models.config import WHISPER_FRAME_WINDOW, ModelConfig
from ..models.emo import ClipCondition, EMOModel, VideoCondition
from ..runtime.families.echomimic import whisper_states
from ..runtime.sampler import ROW


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: float32, uint8, ...

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def layer_counts(model: EMOModel) -> tuple[int, int]:
    """(transformer blocks, temporal layers) of the backbone: the number of K/V pairs of each kind."""
    return len(model.backbone.transformer_blocks()), len(model.backbone.motion_modules())


def hallo(cfg: ModelConfig) -> bool:
    return cfg.uncond_branch == "hallo"


def region_sizes(cfg: ModelConfig) -> list[int]:
    """Hallo: the side of each depth's grid, where its region masks apply (latent / 2^depth)."""
    return [cfg.latent_size >> d for d in range(len(cfg.unet.block_out_channels))] if hallo(cfg) else []


def video_input_specs(cfg: ModelConfig) -> list[TensorSpec]:
    """Hallo's per-video inputs of the step graphs: the region masks per depth and the regions' weights."""
    if not hallo(cfg):
        return []
    specs = [TensorSpec(f"region_mask_{d}", (3, s * s), "float32") for d, s in enumerate(region_sizes(cfg))]
    return specs + [TensorSpec("region_scales", (3,), "float32")]


def to_pixels(frames: Tensor) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0


class Graph(nn.Module):
    """A bundle graph: ``inputs()``/``outputs()`` name its tensors; forward takes them in order."""

    name: str
    components: tuple[str, ...] = ()  # the model components the graph uses

    def __init__(self, model: EMOModel):
        super().__init__()
        self.cfg: ModelConfig = model.config
        self.blocks, self.temporal = layer_counts(model)
        self.audio_modules = len(model.backbone.audio_modules())
        self.model = model.only(*self.components)

    def inputs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def output_names(self) -> list[str]:
        raise NotImplementedError

    def example(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random inputs of the right shapes and ranges (for export tracing and parity checks)."""
        out = {}
        for s in self.inputs():
            if s.dtype == "uint8":
                out[s.name] = rng.integers(0, 256, s.shape, dtype=np.uint8)
            elif s.name == "row":
                out[s.name] = example_row(rng)
            elif s.name == "audio_index":  # rows of the window's whisper states (50 per second of samples)
                states = self.cfg.audio_window_samples * 50 // SAMPLE_RATE
                out[s.name] = np.sort(rng.integers(0, states, s.shape, dtype=np.int64), axis=None).reshape(s.shape)
            elif s.name == "audio_positions":  # each window state's positional row: a run from a random start
                start = int(rng.integers(0, self.cfg.audio.max_source_positions))
                out[s.name] = (start + np.arange(s.shape[0], dtype=np.int64)) % self.cfg.audio.max_source_positions
            elif s.name in ("face_mask", "speed") or s.name.startswith("region_"):
                out[s.name] = rng.random(s.shape, dtype=np.float32)
            else:
                out[s.name] = rng.standard_normal(s.shape, dtype=np.float32)
        return out


def example_row(rng: np.random.Generator) -> np.ndarray:
    """A plausible sampler row: a DDIM step of eps-prediction at a random timestep."""
    from ..runtime.sampler import make_sampler

    table = make_sampler("ddim", 10, guidance_scale=2.5)
    return table.rows[rng.integers(0, len(table.rows))].copy()


def track_windowing(cfg: ModelConfig) -> bool:
    return cfg.audio.windowing == "track"


def wav2vec2_width(cfg: ModelConfig) -> tuple[int, int]:
    return cfg.audio.num_hidden_layers, cfg.audio.hidden_size


class AudioEncoderGraph(Graph):
    """The clip's audio -> its frames' tokens: wav2vec2 and the projection on the clip's window, or
    ("track" windowing) the projection alone of each frame's neighbours in the whole track's features."""

    components = ("audio_encoder",)
    name = "audio_encoder"

    def inputs(self):
        c = self.cfg
        if track_windowing(c):
            return [TensorSpec("audio_windows", (c.frames, 2 * c.audio.window + 1, *wav2vec2_width(c)), "float32")]
        specs = [TensorSpec("audio", (1, c.audio_window_samples), "float32")]
        if c.audio.encoder == "whisper":  # EchoMimic: each frame's whisper rows in the window and each
            # window state's positional row (runtime-made: runtime/families/echomimic.py)
            specs.append(TensorSpec("audio_index", (c.frames, WHISPER_FRAME_WINDOW), "int64"))
            specs.append(TensorSpec("audio_positions", (whisper_states(c.audio_window_samples),), "int64"))
        return specs

    def output_names(self):
        return ["audio_tokens"]

    def forward(self, audio: Tensor, audio_index: Tensor | None = None, audio_positions: Tensor | None = None) -> Tensor:
        if track_windowing(self.cfg):
            return self.model.audio_encoder.project(audio)
        return self.model.encode_audio(audio, audio_index, audio_positions)


def chunk_input_samples(cfg: ModelConfig) -> int:
    """Samples of one wav2vec2 chunk's input: its frames and the one before (runtime/track_audio.py)."""
    return (cfg.audio.chunk + 1) * cfg.samples_per_frame


class AudioStatsGraph(Graph):
    """ "track" windowing: the first conv's sums over a chunk's counted frames (its GroupNorm's whole-track statistics)."""

    components = ("audio_encoder",)
    name = "audio_stats"

    def inputs(self):
        from ..runtime.track_audio import CONV_LAYERS, conv_frames

        n = chunk_input_samples(self.cfg)
        return [TensorSpec("audio", (1, n), "float32"), TensorSpec("conv_mask", (conv_frames(n, CONV_LAYERS[:1]),), "float32")]

    def output_names(self):
        return ["conv_sums"]

    def example(self, rng):
        out = super().example(rng)
        out["conv_mask"] = (np.arange(out["conv_mask"].size) < 0.8 * out["conv_mask"].size).astype(np.float32)
        return out

    def forward(self, audio: Tensor, conv_mask: Tensor) -> Tensor:
        return self.model.audio_encoder.conv_sums(audio, conv_mask)


class AudioFeaturesGraph(Graph):
    """ "track" windowing: one chunk of wav2vec2's pass over the whole track -> (c, layers, hidden)."""

    components = ("audio_encoder",)
    name = "audio_features"

    def inputs(self):
        from ..runtime.track_audio import conv_frames

        c, n = self.cfg.audio.chunk, chunk_input_samples(self.cfg)
        d = self.cfg.audio.conv_dim
        return [
            TensorSpec("audio", (1, n), "float32"),
            TensorSpec("conv_mean", (d,), "float32"),
            TensorSpec("conv_var", (d,), "float32"),
            TensorSpec("resample", (c, conv_frames(n)), "float32"),
            TensorSpec("frame_mask", (c,), "float32"),
        ]

    def output_names(self):
        return ["audio_features"]

    def example(self, rng):
        out = super().example(rng)
        out["conv_var"] = rng.random(out["conv_var"].shape, dtype=np.float32) + 0.5
        out["frame_mask"] = (np.arange(out["frame_mask"].size) < 0.7 * out["frame_mask"].size).astype(np.float32)
        return out

    def forward(self, audio, conv_mean, conv_var, resample, frame_mask) -> Tensor:
        return self.model.audio_encoder.track_features(audio, conv_mean, conv_var, resample, frame_mask)


class AudioSegmentGraph(Graph):
    """whisper (EchoMimic): one 30 s segment of the whole track's normalised log-mel -> its encoder states, once
    per segment of a file under the window schedule (runtime/whisper_mel.py: EchoMimic's file path)."""

    components = ("audio_encoder",)
    name = "audio_segment"

    def inputs(self):
        a = self.cfg.audio
        return [TensorSpec("mel", (1, a.num_mel_bins, 2 * a.max_source_positions), "float32")]

    def output_names(self):
        return ["segment_states"]

    def forward(self, mel: Tensor) -> Tensor:
        return self.model.audio_encoder.mel_states(mel)


class ReferenceGraph(Graph):
    """Reference image -> VAE latent -> ReferenceNet -> the backbone's attn1 keys/values: once per video.

    Hallo: also the face embedding -> the backbone's attn2 keys/values of its tokens.
    """

    components = ("vae", "reference_net", "backbone", "face_projection")

    name = "reference_net"

    def inputs(self):
        r = self.cfg.resolution
        specs = [TensorSpec("reference", (1, r, r, 3), "uint8")]
        if hallo(self.cfg):
            specs.append(TensorSpec("face_embedding", (1, self.cfg.face_embedding_dim), "float32"))
        return specs

    def output_names(self):
        names = [f"ref_{kv}_{i}" for i in range(self.blocks) for kv in "kv"]
        if hallo(self.cfg):
            names += [f"embed_{kv}_{i}" for i in range(self.blocks) for kv in "kv"]
        return names

    def forward(self, reference: Tensor, face_embedding: Tensor | None = None) -> tuple[Tensor, ...]:
        kv = self.model.reference(self.model.encode_image(to_pixels(reference)), face_embedding)
        if face_embedding is not None:
            kv = kv + self.model.face_context_kv(face_embedding)
        return tuple(t for pair in kv for t in pair)


class VAEEncoderGraph(Graph):
    """The previous clip's last n frames -> motion latents: once per clip."""

    components = ("vae",)

    name = "vae_encoder"

    def inputs(self):
        r = self.cfg.resolution
        return [TensorSpec("frames", (self.cfg.motion_frames, r, r, 3), "uint8")]

    def output_names(self):
        return ["latents"]

    def forward(self, frames: Tensor) -> Tensor:
        return self.model.encode_image(to_pixels(frames))


class VAEDecoderGraph(Graph):
    components = ("vae",)
    name = "vae_decoder"

    def inputs(self):
        h = self.cfg.latent_size
        return [TensorSpec("latents", (self.cfg.frames, 4, h, h), "float32")]

    def output_names(self):
        return ["frames"]

    def forward(self, latents: Tensor) -> Tensor:
        return self.model.decode_latents(latents)


def clip_output_names(blocks: int, temporal: int, speed: bool, audio_modules: int = 0, motion: bool = True) -> list[str]:
    """Names of clip_condition's outputs; ``audio_modules`` > 0: Hallo's; ``motion=False``: no motion frames (EchoMimic)."""
    if audio_modules:
        names = [f"audio_{kv}_{i}_{r}" for i in range(audio_modules) for r in range(3) for kv in "kv"]
        for prefix in ("motion", "uncond_motion"):
            names += [f"{prefix}_{p}_{j}" for j in range(temporal) for p in "qkvh"]
        return names + ["face"]
    names = [f"audio_{kv}_{i}" for i in range(blocks) for kv in "kv"]
    names += [f"motion_{kv}_{j}" for j in range(temporal if motion else 0) for kv in "kv"]
    if speed:
        names += [f"speed_{kv}_{j}" for j in range(temporal) for kv in "kv"]
    return names + ["face"]


class ClipConditionGraph(Graph):
    """Audio tokens, motion latents, face mask, speed -> every per-clip key/value: once per clip."""

    components = ("reference_net", "backbone", "face_locator", "speed_encoder", "face_projection")

    name = "clip_condition"

    def inputs(self):
        c, f, h = self.cfg, self.cfg.frames, self.cfg.latent_size
        specs = [TensorSpec("audio_tokens", (f, c.audio.tokens, c.unet.cross_attention_dim), "float32")]
        if c.motion_frames:  # EchoMimic has none
            specs.append(TensorSpec("motion_latents", (c.motion_frames, 4, h, h), "float32"))
        # the face mask is repeated to the locator's channels inside
        specs.append(TensorSpec("face_mask", (1, 1, c.resolution, c.resolution), "float32"))
        if c.unet.speed_dim:
            specs.append(TensorSpec("speed", (f,), "float32"))
        if hallo(c):
            specs.append(TensorSpec("face_embedding", (1, c.face_embedding_dim), "float32"))
        return specs

    def output_names(self):
        return clip_output_names(
            self.blocks, self.temporal, bool(self.cfg.unet.speed_dim), self.audio_modules, bool(self.cfg.motion_frames)
        )

    def forward(self, audio_tokens, *rest) -> tuple[Tensor, ...]:
        named = dict(zip([s.name for s in self.inputs()[1:]], rest, strict=True))
        h = self.cfg.latent_size
        motion_latents = named.get("motion_latents", audio_tokens.new_zeros(0, 4, h, h))
        cc = self.model.clip_condition(audio_tokens, motion_latents, named["face_mask"], named.get("speed"), named.get("face_embedding"))
        if hallo(self.cfg):
            out = [t for triple in cc.audio for pair in triple for t in pair]
            out += [t for state in cc.motion + cc.uncond_motion for t in state]
            return tuple(out) + (cc.face,)
        out = [t for pair in cc.audio for t in pair] + [t for pair in cc.motion or () for t in pair]
        if cc.speed is not None:
            out += [t for pair in cc.speed for t in pair]
        return tuple(out) + (cc.face,)


class DenoiseStepGraph(Graph):
    """One whole denoising step: model (+ guidance), then the solver update in fp32.

    x0      = a_x x + a_o out
    x_next  = c_x x + c_0 x0 + c_p x0_prev + c_n noise
    ``guided``: out = out_u + g (out_c - out_u), the unconditional branch's audio
    keys/values baked in as constants; else the conditional branch alone. Hallo: its
    unconditional branch's constants are the zero face embedding's and zero audio's
    keys/values; its motion frames are the ``uncond_motion_*`` inputs.
    """

    components = ("backbone",)

    def __init__(self, model: EMOModel, guided: bool, precision: str = "fp32"):
        super().__init__(model)
        self.guided = guided
        self.precision = precision
        self.name = "denoise_step" if guided else "denoise_step_cond"
        if precision == "fp16":
            # a half copy of the backbone; norms and softmax stay fp32 (GroupNorm32, LayerNorm32, attend)
            import copy

            self.model.backbone = copy.deepcopy(model.backbone).half()
            self.name += ".fp16"
        elif precision != "fp32":
            raise ValueError(f"step graphs are exported in fp32 or fp16, not {precision!r}")
        if guided:
            with torch.no_grad():
                if hallo(self.cfg):
                    consts = {f"uncond_ctx_{kv}_{i}": t for i, p in enumerate(model.uncond_context_kv()) for kv, t in zip("kv", p)}
                    consts |= {
                        f"uncond_audio_{kv}_{i}_{r}": t
                        for i, triple in enumerate(model.uncond_audio_kv())
                        for r, p in enumerate(triple)
                        for kv, t in zip("kv", p)
                    }
                else:
                    consts = {f"uncond_{kv}_{i}": t for i, p in enumerate(model.uncond_audio_kv()) for kv, t in zip("kv", p)}
            for name, t in consts.items():
                self.register_buffer(name, t.clone(), persistent=False)

    def uncond(self, dtype: torch.dtype):
        """The unconditional branch's constants, in the order model_output takes them."""
        get = lambda name: getattr(self, name).to(dtype)  # noqa: E731
        if hallo(self.cfg):
            ctx = [(get(f"uncond_ctx_k_{i}"), get(f"uncond_ctx_v_{i}")) for i in range(self.blocks)]
            audio = [
                tuple((get(f"uncond_audio_k_{i}_{r}"), get(f"uncond_audio_v_{i}_{r}")) for r in range(3)) for i in range(self.audio_modules)
            ]
            return ctx, audio
        return [(get(f"uncond_k_{i}"), get(f"uncond_v_{i}")) for i in range(self.blocks)]

    def inputs(self):
        f, h = self.cfg.frames, self.cfg.latent_size
        latent = (f, 4, h, h)
        specs = [
            TensorSpec("x", latent, "float32"),
            TensorSpec("row", (len(ROW),), "float32"),
            TensorSpec("x0_prev", latent, "float32"),
            TensorSpec("noise", latent, "float32"),
        ]
        kv_shapes = self.kv_shapes()
        specs += [TensorSpec(n, kv_shapes[n], "float32") for n in self.kv_names()]
        return specs + video_input_specs(self.cfg)

    def kv_names(self) -> list[str]:
        names = [f"ref_{kv}_{i}" for i in range(self.blocks) for kv in "kv"]
        if hallo(self.cfg):
            names += [f"embed_{kv}_{i}" for i in range(self.blocks) for kv in "kv"]
        clip = clip_output_names(
            self.blocks, self.temporal, bool(self.cfg.unet.speed_dim), self.audio_modules, bool(self.cfg.motion_frames)
        )
        return names + [n for n in clip if self.guided or not n.startswith("uncond_")]

    def kv_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the per-video and per-clip tensors, read off the model on the meta device."""
        return condition_shapes(self.model)

    def output_names(self):
        return ["x_next", "x0"]

    def forward(self, x, row, x0_prev, noise, *cond) -> tuple[Tensor, Tensor]:
        named = dict(zip(self.kv_names() + [s.name for s in video_input_specs(self.cfg)], cond, strict=True))
        x_in = x
        if self.precision == "fp16":  # graph I/O stays fp32; the backbone computes in fp16
            named = {k: v.half() for k, v in named.items()}
            x_in = x.half()
        pairs = lambda prefix, n: [(named[f"{prefix}_k_{i}"], named[f"{prefix}_v_{i}"]) for i in range(n)]  # noqa: E731
        ref, video = pairs("ref", self.blocks), None
        if hallo(self.cfg):
            audio = [tuple((named[f"audio_k_{i}_{r}"], named[f"audio_v_{i}_{r}"]) for r in range(3)) for i in range(self.audio_modules)]
            states = lambda prefix: [tuple(named[f"{prefix}_{p}_{j}"] for p in "qkvh") for j in range(self.temporal)]  # noqa: E731
            clip = ClipCondition(audio, states("motion"), None, named["face"], states("uncond_motion") if self.guided else None)
            regions = [named[f"region_mask_{d}"] for d in range(len(region_sizes(self.cfg)))]
            video = VideoCondition(pairs("embed", self.blocks), regions, named["region_scales"])
        else:
            speed = pairs("speed", self.temporal) if self.cfg.unet.speed_dim else None
            motion = pairs("motion", self.temporal) if self.cfg.motion_frames else None
            clip = ClipCondition(pairs("audio", self.blocks), motion, speed, named["face"])
        t = row[0:1]
        if self.guided:
            out = self.model.model_output(x_in, t, ref, clip, row[7], self.uncond(x_in.dtype), video)
        else:
            out = self.model.model_output(x_in, t, ref, clip, None, video=video)
        out = out.float()  # the solver update stays fp32 whatever the backbone's precision
        x0 = row[1] * x + row[2] * out
        x_next = row[3] * x + row[4] * x0 + row[5] * x0_prev + row[6] * noise
        return x_next, x0


_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {}


def condition_shapes(model: EMOModel) -> dict[str, tuple[int, ...]]:
    """Shape of every reference and clip-condition output, by running those graphs on the meta device."""
    cfg = model.config
    key = cfg.to_json()
    if key not in _SHAPES:
        from ..models.emo import build_model

        meta = build_model(cfg, device="meta")
        shapes = {}
        with torch.no_grad():
            for g in (ReferenceGraph(meta), ClipConditionGraph(meta)):
                args = [torch.empty(s.shape, dtype=getattr(torch, s.dtype), device="meta") for s in g.inputs()]
                outs = g(*args)
                shapes.update({n: tuple(o.shape) for n, o in zip(g.output_names(), outs, strict=True)})
        _SHAPES[key] = shapes
    return _SHAPES[key]


def all_graphs(model: EMOModel, precisions: tuple[str, ...] = ("fp32",)) -> list[Graph]:
    """Every graph of a bundle, in the order the runtime first uses them; fp16 adds the step graphs."""
    extra = [DenoiseStepGraph(model, guided, "fp16") for guided in (True, False)] if "fp16" in precisions else []
    track = [AudioStatsGraph(model), AudioFeaturesGraph(model)] if track_windowing(model.config) else []
    if model.config.audio.encoder == "whisper":  # EchoMimic's 30 s segments, for files under the window schedule
        track.append(AudioSegmentGraph(model))
    return [
        *extra,
        *track,
        AudioEncoderGraph(model),
        ReferenceGraph(model),
        *([VAEEncoderGraph(model)] if model.config.motion_frames else []),  # EchoMimic: no motion frames
        ClipConditionGraph(model),
        DenoiseStepGraph(model, guided=True),
        DenoiseStepGraph(model, guided=False),
        VAEDecoderGraph(model),
    ]
